# prepare-image inside the build VM, against `/` (Packer 1.6.6 or later).
#
# Which template?
#
#   in-guest.pkr.hcl     Packer boots a VM and the cloud captures its disk
#                        (tencentcloud-cvm, amazon-ebs, ...): the image never
#                        becomes a file you can reach, so prepare-image runs
#                        inside the VM against `/`, as the LAST provisioner,
#                        after cloud-init's own first boot has finished (it
#                        would otherwise still be writing the very settings
#                        you want to keep).
#   on-artifact.pkr.hcl  The build leaves an image file on the Packer host
#                        (qemu with format raw or qcow2): prepare-image edits
#                        that file after the VM has shut down; nothing is
#                        uploaded into the guest.
#
# The binary is uploaded into whatever distribution is being built, so use
# the static build (no glibc needed in the guest, CentOS 7 era included):
#
#   scripts/build-static.sh      # -> target/x86_64-unknown-linux-gnu/release/prepare-image
#   packer build -var keep=hostname,dns -var ssh_host=203.0.113.7 \
#     -var prepare_image_binary=target/x86_64-unknown-linux-gnu/release/prepare-image \
#     examples/packer/in-guest.pkr.hcl
#
# As written, the source is the null builder connecting over SSH to a machine
# that is already running (ssh_host): a working way to prepare an existing
# VM before you capture it yourself. For a real image build, replace it with
# your builder: the tencentcloud-cvm and qemu sources at the end of this file
# are examples; name yours in `sources`. The provisioners stay as they are.

variable "prepare_image_binary" {
  type        = string
  default     = "target/x86_64-unknown-linux-gnu/release/prepare-image"
  description = "Path on the Packer host of the prepare-image binary to upload (build it with scripts/build-static.sh)."
}

variable "keep" {
  type        = string
  description = "What to keep, a comma list of profiles: hostname, hosts, dns, repos, ntp, passwords, keys, network, or all. See `prepare-image profiles`."
  validation {
    # Packer 1.6.6 has no regex(); regex_replace removes every allowed
    # character, so anything left over (a space, `;`, a quote) is refused
    # before it reaches the guest's shell.
    condition     = var.keep != "" && regex_replace(var.keep, "[A-Za-z0-9_.,-]", "") == ""
    error_message = "The keep variable must be a comma list of profile names, e.g. \"hostname,dns\"."
  }
}

# For the null source only.
variable "ssh_host" {
  type        = string
  default     = ""
  description = "The running machine to prepare (null source)."
}

variable "ssh_username" {
  type    = string
  default = "root"
}

source "null" "guest" {
  ssh_host     = var.ssh_host
  ssh_username = var.ssh_username
  # Keys come from your ssh-agent; or set ssh_private_key_file.
  ssh_agent_auth = true
}

build {
  sources = ["source.null.guest"]

  # ... your own provisioners go first ...

  # Upload the binary. /tmp may be mounted noexec in some guests; then
  # upload it elsewhere (e.g. /var/tmp) and change the paths below.
  provisioner "file" {
    source      = var.prepare_image_binary
    destination = "/tmp/prepare-image"
  }

  # Last: wait for first boot, keep the settings, then prove they hold.
  # Inline commands run with `sh -e`: the first failing command fails the
  # provisioner and the build, and no image is captured.
  provisioner "shell" {
    # prepare-image needs root to edit /etc/cloud; drop `sudo -n` if you log
    # in as root.
    execute_command = "chmod +x {{ .Path }}; sudo -n env {{ .Vars }} {{ .Path }}"
    inline = [
      # cloud-init's first boot in the build VM must be over before the
      # edit, or it may still rewrite what you keep. Its exit status is
      # ignored: status 1 or 2 means first boot reported errors, which are
      # the build VM's own business, not the image's.
      "cloud-init status --wait || true",
      "chmod 0755 /tmp/prepare-image",
      # Make the edits (prints the diff and what each change breaks) and, in
      # the same run, remove what this VM's own first boot left: cloud-init's
      # state (/var/lib/cloud) and logs. `--clean=machine-id` also empties
      # /etc/machine-id. Exit 1 (nothing written) if a keep cannot hold.
      "/tmp/prepare-image --keep ${var.keep} --clean /",
      # Optional: fail the build (exit 4) on anything that would break
      # cloud-init at first boot, e.g. a re-pointed /usr/bin/python.
      # "/tmp/prepare-image doctor /",
      # Prove it: exit 3, failing the build, if any change is still pending.
      "/tmp/prepare-image --keep ${var.keep} --check /",
      # Leave nothing behind in the image.
      "rm -f /tmp/prepare-image",
    ]
  }
}

# Tencent Cloud CVM: the image is captured by the cloud at the end of the
# build. Credentials from TENCENTCLOUD_SECRET_ID/TENCENTCLOUD_SECRET_KEY.
# Use it with  sources = ["source.tencentcloud-cvm.centos"]
#
# source "tencentcloud-cvm" "centos" {
#   region                      = "ap-guangzhou"
#   zone                        = "ap-guangzhou-4"
#   instance_type               = "S5.MEDIUM2"
#   source_image_id             = "img-xxxxxxxx"
#   image_name                  = "centos-kept-hostname"
#   disk_type                   = "CLOUD_PREMIUM"
#   associate_public_ip_address = true
#   ssh_username                = "root"
# }
#
# qemu, capturing the disk as a file: boot a cloud image with a NoCloud seed
# that lets Packer log in (cd_files needs xorriso or mkisofs on the host).
# Use it with  sources = ["source.qemu.centos"]
#
# source "qemu" "centos" {
#   disk_image       = true
#   iso_url          = "https://cloud.centos.org/centos/8/x86_64/images/CentOS-8-GenericCloud-8.4.2105-20210603.0.x86_64.qcow2"
#   iso_checksum     = "sha256:<the image's sha256, from CHECKSUM next to it>"
#   format           = "qcow2"
#   disk_size        = "10G"
#   output_directory = "output-centos"
#   vm_name          = "centos.qcow2"
#   headless         = true
#   cd_files         = ["seed/user-data", "seed/meta-data"]
#   cd_label         = "cidata"
#   ssh_username     = "centos"
#   ssh_password     = "packer"
#   ssh_timeout      = "10m"
#   shutdown_command = "sudo shutdown -P now"
# }
