# prepare-image on the image FILE a build produced (Packer 1.6.6 or later).
#
# Which template?
#
#   in-guest.pkr.hcl     Packer boots a VM and the cloud captures its disk
#                        (tencentcloud-cvm, amazon-ebs, ...): the image never
#                        becomes a file you can reach, so prepare-image runs
#                        inside the VM against `/`, as the last provisioner.
#   on-artifact.pkr.hcl  The build leaves an image file on the machine that
#                        runs Packer (qemu with format raw or qcow2, or an
#                        image you downloaded) and you import that file
#                        (Tencent Cloud imports raw, qcow2, vmdk, vhd, vhdx).
#                        prepare-image edits the file after the VM has shut
#                        down, without booting it and without installing
#                        anything in the guest. It needs root on the Packer
#                        host (loop devices, mounts) and, for qcow2/vmdk/vhd/
#                        vhdx, qemu-storage-daemon (Debian: qemu-utils).
#
# As written, the source is the null builder: the build itself does nothing
# and the post-processors edit the existing image file `image`. That is a
# working pipeline on its own ("prepare this image file"), and it is how
# tests/packer.rs runs this very template:
#
#   sudo packer build -var keep=hostname,dns -var image=disk.qcow2 on-artifact.pkr.hcl
#
# To prepare the output of a real build, replace the source with your builder
# (e.g. the qemu source at the end of this file), name it in `sources`, and set
# `image` to the file the builder writes (for qemu: output_directory/vm_name).
#
# Why post-processors and not provisioners: provisioners run while the VM is
# up and its disk is in use (prepare-image refuses an image that another
# process has open for writing); post-processors run after the builder has
# shut the VM down and written the image file.

variable "prepare_image_binary" {
  type        = string
  default     = "prepare-image"
  description = "The prepare-image command on the Packer host: a path, or e.g. \"sudo /usr/local/bin/prepare-image\" when Packer does not run as root."
}

variable "keep" {
  type        = string
  description = "What to keep, a comma list of profiles: hostname, hosts, dns, repos, ntp, passwords, keys, network, or all. See `prepare-image profiles`."
  validation {
    # Packer 1.6.6 has no regex(); regex_replace removes every allowed
    # character, so anything left over (a space, `;`, a quote) is refused
    # before it reaches the shell.
    condition     = var.keep != "" && regex_replace(var.keep, "[A-Za-z0-9_.,-]", "") == ""
    error_message = "The keep variable must be a comma list of profile names, e.g. \"hostname,dns\"."
  }
}

variable "image" {
  type        = string
  description = "The image file to prepare: raw, qcow2, vmdk, vhd or vhdx (for the qemu source below: \"output-centos/centos.qcow2\")."
  validation {
    condition     = var.image != "" && regex_replace(var.image, "'", "") == var.image
    error_message = "The image variable must be a path without single quotes."
  }
}

source "null" "image" {
  communicator = "none"
}

build {
  sources = ["source.null.image"]

  # One chain: each step runs only if the one before succeeded, and a failing
  # step fails the build (Packer exits 1 and names the post-processor).
  post-processors {
    # Make the edits and, in the same attach and mount, remove what the
    # build VM's first boot left (cloud-init's state and logs; add
    # `--clean=machine-id` for /etc/machine-id). Prints the diff (stdout),
    # what each change breaks and what was removed (stderr). Exit 1 (nothing
    # written) if a keep cannot hold.
    post-processor "shell-local" {
      name   = "prepare-image"
      inline = ["${var.prepare_image_binary} --keep ${var.keep} --clean '${var.image}'"]
    }
    # Optional: fail the build (exit 4) on anything that would break
    # cloud-init at first boot, read-only:
    # post-processor "shell-local" {
    #   name   = "prepare-image-doctor"
    #   inline = ["${var.prepare_image_binary} doctor '${var.image}'"]
    # }
    # Prove it: exit 3 (and fail the build) if any change is still pending.
    post-processor "shell-local" {
      name   = "prepare-image-check"
      inline = ["${var.prepare_image_binary} --keep ${var.keep} --check '${var.image}'"]
    }
  }
}

# A real build that leaves a qcow2 file, to use instead of the null source
# above: boot a cloud image, provision it, shut it down; the post-processors
# then edit output-centos/centos.qcow2. Use it with
#   sources = ["source.qemu.centos"]   and   -var image=output-centos/centos.qcow2
# (cd_files needs xorriso or mkisofs on the Packer host; user-data and
# meta-data are a NoCloud seed that lets Packer log in.)
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
