//! The names of the files in an initramfs, read as a stream: the kernel's
//! format is a sequence of cpio archives (newc), each uncompressed or
//! compressed, e.g. an uncompressed early microcode archive followed by a
//! compressed main one. Compressed parts go through the distribution's own
//! decompressor (`gzip -dc`, `zstd -dc`, ...) fed straight from the file, so
//! neither the file nor its decompressed form is ever held whole.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::access::fs::Stream;

/// The newc header: magic and 13 fields of 8 hex digits.
const HEADER_LEN: usize = 110;
/// Longest name accepted in an archive (PATH_MAX); longer is not an initramfs.
const MAX_NAME: usize = 4096;
const TRAILER: &str = "TRAILER!!!";

/// The decompressor for a part, told by its magic bytes.
fn decompressor(magic: &[u8]) -> Option<&'static str> {
    const MAGICS: &[(&[u8], &str)] = &[
        (&[0x1f, 0x8b], "gzip"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz"),
        (&[0x5d, 0, 0], "xz"), // lzma alone: `xz -dc` reads it too
        (b"BZh", "bzip2"),
        (&[0x02, 0x21, 0x4c, 0x18], "lz4"),
    ];
    MAGICS
        .iter()
        .find(|(m, _)| magic.starts_with(m))
        .map(|(_, tool)| *tool)
}

/// Calls `visit` with every file name in the initramfs (as stored, e.g.
/// `usr/lib/modules/...`); nothing is kept, so memory stays bounded by one name.
pub fn for_each_name(mut file: Stream, visit: &mut dyn FnMut(&str)) -> Result<()> {
    let mut offset = 0u64;
    loop {
        file.seek(SeekFrom::Start(offset))?;
        let mut reader = BufReader::new(&mut file);
        // Parts are padded with zeros between them.
        let skipped = skip_zeros(&mut reader)?;
        offset += skipped;
        let magic = reader.fill_buf()?.to_vec();
        if magic.is_empty() {
            return Ok(());
        }
        if magic.starts_with(b"07070") {
            let consumed = read_archive(&mut reader, visit)?;
            offset += consumed;
            continue;
        }
        let Some(tool) = decompressor(&magic) else {
            bail!("offset {offset}: neither a cpio archive nor a compression this reads");
        };
        drop(reader);
        file.seek(SeekFrom::Start(offset))?;
        // The rest of the file is one compressed stream (the kernel too
        // stops at the end of a compressed part's archives).
        let input = host_file(&mut file)?;
        let mut child = Command::new(tool)
            .arg("-dc")
            .stdin(Stdio::from(input))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!("running `{tool} -dc` to read the initramfs (install {tool})")
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no output from {tool}"))?;
        let mut decompressed = BufReader::new(stdout);
        let result = (|| -> Result<()> {
            loop {
                skip_zeros(&mut decompressed)?;
                if decompressed.fill_buf()?.is_empty() {
                    return Ok(());
                }
                read_archive(&mut decompressed, visit)?;
            }
        })();
        // Stop the decompressor whatever happened (it may still be writing).
        drop(decompressed);
        let _ = child.kill();
        let _ = child.wait();
        return result;
    }
}

/// Largest compressed rest of an initramfs copied out of an image read in user space (real ones
/// are under 200 MB).
const MAX_SPILL: u64 = 1 << 31;

/// The rest of `file` from its position, as a host file a decompressor can read: the file
/// itself when it is one, else a copy in an unnamed temporary file (gone when closed).
fn host_file(file: &mut Stream) -> io::Result<File> {
    match file {
        Stream::File(f) => f.try_clone(),
        Stream::Reader(r) => {
            let mut spill = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_TMPFILE)
                .mode(0o600)
                .open(std::env::temp_dir())?;
            io::copy(&mut r.take(MAX_SPILL), &mut spill)?;
            spill.seek(SeekFrom::Start(0))?;
            Ok(spill)
        }
    }
}

fn skip_zeros(reader: &mut impl BufRead) -> io::Result<u64> {
    let mut skipped = 0u64;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(skipped);
        }
        let zeros = buf.iter().take_while(|&&b| b == 0).count();
        let done = zeros < buf.len();
        reader.consume(zeros);
        skipped += zeros as u64;
        if done {
            return Ok(skipped);
        }
    }
}

fn hex_field(header: &[u8], index: usize) -> Result<u64> {
    let start = 6 + index * 8;
    let text = std::str::from_utf8(&header[start..start + 8])
        .map_err(|_| anyhow!("cpio header is not hex"))?;
    u64::from_str_radix(text, 16).map_err(|_| anyhow!("cpio header field {text:?} is not hex"))
}

/// Reads one archive up to and including its trailer; returns the bytes consumed.
fn read_archive(reader: &mut impl BufRead, visit: &mut dyn FnMut(&str)) -> Result<u64> {
    let mut consumed = 0u64;
    loop {
        let mut header = [0u8; HEADER_LEN];
        reader
            .read_exact(&mut header)
            .context("truncated cpio header")?;
        if !header.starts_with(b"070701") && !header.starts_with(b"070702") {
            bail!("not a newc cpio header");
        }
        let file_size = hex_field(&header, 6)?;
        let name_size = usize::try_from(hex_field(&header, 11)?)?;
        if name_size == 0 || name_size > MAX_NAME {
            bail!("cpio entry name of {name_size} bytes");
        }
        let mut name = vec![0u8; name_size];
        reader
            .read_exact(&mut name)
            .context("truncated cpio name")?;
        // Header and name together are padded to a multiple of four.
        let name_pad = (4 - (HEADER_LEN + name_size) % 4) % 4;
        let data_pad = (4 - file_size % 4) % 4;
        let skip = name_pad as u64 + file_size + data_pad;
        let copied = io::copy(&mut reader.take(skip), &mut io::sink())?;
        if copied != skip {
            bail!("truncated cpio data");
        }
        consumed += (HEADER_LEN + name_size) as u64 + skip;
        let name = String::from_utf8_lossy(name.strip_suffix(&[0]).unwrap_or(&name)).into_owned();
        if name == TRAILER {
            return Ok(consumed);
        }
        visit(&name);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A newc archive of these files (name, contents), with its trailer.
    pub fn cpio(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in files.iter().copied().chain([(TRAILER, &b""[..])]) {
            let name_size = name.len() + 1;
            write!(out, "070701").unwrap();
            for value in [
                0,
                0o100644,
                0,
                0,
                1,
                0,
                data.len(),
                0,
                0,
                0,
                0,
                name_size,
                0,
            ] {
                write!(out, "{value:08x}").unwrap();
            }
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            while out.len() % 4 != 0 {
                out.push(0);
            }
            out.extend_from_slice(data);
            while out.len() % 4 != 0 {
                out.push(0);
            }
        }
        out
    }

    pub fn compress(tool: &str, data: &[u8]) -> Vec<u8> {
        let mut child = Command::new(tool)
            .arg("-c")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out.stdout
    }

    fn names_of(bytes: &[u8]) -> Result<Vec<String>> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        let mut names = Vec::new();
        for_each_name(Stream::File(file), &mut |n| names.push(n.to_string()))?;
        // A file from an image read in user space is a stream, not a host file: same names.
        let stream = Stream::Reader(Box::new(std::io::Cursor::new(bytes.to_vec())));
        let mut streamed = Vec::new();
        for_each_name(stream, &mut |n| streamed.push(n.to_string()))?;
        assert_eq!(names, streamed);
        Ok(names)
    }

    #[test]
    fn an_early_microcode_archive_then_a_compressed_one_are_both_read() {
        let early = cpio(&[("kernel/x86/microcode/GenuineIntel.bin", b"ucode")]);
        let main = cpio(&[
            (
                "usr/lib/modules/6.1.0-13-amd64/kernel/drivers/block/virtio_blk.ko",
                b"elf",
            ),
            ("init", b"#!/bin/sh\n"),
        ]);
        for tool in ["gzip", "zstd", "xz"] {
            let mut image = early.clone();
            image.extend_from_slice(&[0; 512]);
            image.extend(compress(tool, &main));
            assert_eq!(
                names_of(&image).unwrap(),
                [
                    "kernel/x86/microcode/GenuineIntel.bin",
                    "usr/lib/modules/6.1.0-13-amd64/kernel/drivers/block/virtio_blk.ko",
                    "init"
                ],
                "{tool}"
            );
        }
        assert_eq!(names_of(&main).unwrap().len(), 2);
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_hangs() {
        assert!(names_of(b"not an initramfs").is_err());
        let whole = cpio(&[("a", b"0123456789")]);
        assert!(names_of(&whole[..120]).is_err());
        let mut huge_name = cpio(&[("a", b"")]);
        huge_name[94..102].copy_from_slice(b"7fffffff");
        assert!(names_of(&huge_name).is_err());
    }
}
