//! A block source read over NBD from our own `qemu-storage-daemon`
//! ([`NbdServer`]): the formats no Rust reader here reads (vmdk, vhd, vhdx,
//! and qcow2 features imago refuses, e.g. zstd compression), for an
//! unprivileged user, with no FUSE and no mount.
//!
//! The client speaks the fixed-newstyle handshake with `NBD_OPT_GO` and
//! simple replies only (structured replies are never asked for), one
//! request at a time. qemu parses the hostile image; still, nothing the
//! server says is trusted to size an allocation: option replies are capped,
//! and a read reply carries exactly the bytes we asked for.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::block::{BlockSource, in_bounds, past_end};
use super::containment::Layer;
use super::qemu::{NBD_EXPORT, NbdServer};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;

const OPT_ABORT: u32 = 2;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERROR_BIT: u32 = 1 << 31;
const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const CMD_READ: u16 = 0;
const CMD_DISC: u16 = 2;

/// The largest option reply we read: an info reply is 12 or 14 bytes, an
/// error's message a line. More is a broken server, not something to store.
const MAX_OPTION_REPLY: u32 = 4096;
/// How many option replies `NBD_OPT_GO` may send before its ACK.
const MAX_OPTION_REPLIES: usize = 64;
/// The spec's advice: clients should not ask for more than 32 MiB at once.
const MAX_REQUEST: u32 = 32 << 20;
/// A read that takes longer than this means a stuck daemon, not a slow disk.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// What `NBD_OPT_GO` told us about the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    /// Reads are aligned to this (a power of two, at least 1).
    pub min_block: u32,
    /// No read asks for more than this.
    pub max_request: u32,
}

/// The `IHAVEOPT` option header and data of `NBD_OPT_GO` for `name`,
/// asking for the block-size information.
pub fn go_request(name: &str) -> Vec<u8> {
    let mut data = Vec::new();
    data.extend_from_slice(&(name.len() as u32).to_be_bytes());
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(&1u16.to_be_bytes());
    data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    let mut out = Vec::with_capacity(16 + data.len());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&OPT_GO.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&data);
    out
}

/// The server's greeting: its handshake flags, or why it is not an NBD
/// server we can talk to.
pub fn parse_greeting(greeting: &[u8; 18]) -> io::Result<u16> {
    let magic = be64(greeting, 0);
    let opt = be64(greeting, 8);
    if magic != NBDMAGIC || opt != IHAVEOPT {
        return Err(invalid("not a newstyle NBD server"));
    }
    let flags = u16::from_be_bytes([greeting[16], greeting[17]]);
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(invalid("the NBD server does not speak fixed newstyle"));
    }
    Ok(flags)
}

/// An option reply's header: (reply type, data length), checked against the
/// option we sent and capped.
pub fn parse_option_reply_header(header: &[u8; 20], option: u32) -> io::Result<(u32, u32)> {
    let magic = be64(header, 0);
    let replied_to = be32(header, 8);
    let kind = be32(header, 12);
    let len = be32(header, 16);
    if magic != OPTION_REPLY_MAGIC {
        return Err(invalid("bad NBD option reply magic"));
    }
    if replied_to != option {
        return Err(invalid(format!(
            "NBD reply to option {replied_to}, expected {option}"
        )));
    }
    if len > MAX_OPTION_REPLY {
        return Err(invalid(format!("NBD option reply of {len} bytes")));
    }
    Ok((kind, len))
}

/// Folds one `NBD_REP_INFO` payload into `info`. Unknown info types are
/// ignored, as the spec asks.
pub fn apply_info(data: &[u8], info: &mut ExportInfo, seen_export: &mut bool) -> io::Result<()> {
    let Some(kind) = data.get(0..2) else {
        return Err(invalid("NBD info reply without a type"));
    };
    match u16::from_be_bytes([kind[0], kind[1]]) {
        INFO_EXPORT => {
            if data.len() != 12 {
                return Err(invalid("NBD export info of the wrong length"));
            }
            info.size = be64(data, 2);
            *seen_export = true;
        }
        INFO_BLOCK_SIZE => {
            if data.len() != 14 {
                return Err(invalid("NBD block size info of the wrong length"));
            }
            let (min, max) = (be32(data, 2), be32(data, 10));
            if !min.is_power_of_two() || min > 64 * 1024 || max < min {
                return Err(invalid(format!(
                    "NBD block sizes out of range (minimum {min}, maximum {max})"
                )));
            }
            info.min_block = min;
            // Keep whole minimum blocks in every request.
            info.max_request = max.min(MAX_REQUEST) / min * min;
        }
        _ => {}
    }
    Ok(())
}

/// An error reply's meaning, with the server's message when it sent one.
fn option_error(kind: u32, message: &[u8]) -> io::Error {
    let what = match kind & !REP_ERROR_BIT {
        1 => "option not supported",
        2 => "refused by policy",
        3 => "invalid",
        4 => "not available on this platform",
        5 => "TLS required",
        6 => "unknown export",
        7 => "server shutting down",
        8 => "block size required",
        9 => "request too big",
        _ => "error",
    };
    let message = String::from_utf8_lossy(message);
    let message = message.trim();
    if message.is_empty() {
        invalid(format!("NBD server: {what}"))
    } else {
        invalid(format!("NBD server: {what}: {message}"))
    }
}

/// A 28-byte transmission request.
pub fn request(kind: u16, cookie: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut out = [0u8; 28];
    out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out[6..8].copy_from_slice(&kind.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..24].copy_from_slice(&offset.to_be_bytes());
    out[24..28].copy_from_slice(&len.to_be_bytes());
    out
}

/// A simple reply's header: Ok when it answers `cookie` without error.
pub fn check_simple_reply(header: &[u8; 16], cookie: u64) -> io::Result<()> {
    let magic = be32(header, 0);
    let error = be32(header, 4);
    let answered = be64(header, 8);
    if magic != SIMPLE_REPLY_MAGIC {
        return Err(invalid("bad NBD reply magic"));
    }
    if answered != cookie {
        return Err(invalid(format!(
            "NBD reply for request {answered}, expected {cookie}"
        )));
    }
    if error != 0 {
        // NBD's errors are errno values (EIO, EINVAL, ...).
        return Err(io::Error::from_raw_os_error(error as i32));
    }
    Ok(())
}

/// The aligned request covering `wanted` bytes at `offset`, inside `size`:
/// (start, length).
pub fn aligned(offset: u64, wanted: u64, min_block: u32, size: u64) -> (u64, u64) {
    let block = u64::from(min_block);
    let start = offset / block * block;
    let end = offset
        .saturating_add(wanted)
        .div_ceil(block)
        .saturating_mul(block)
        .min(size);
    (start, end - start)
}

/// The big-endian integers at `at` (the caller has checked the length).
fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// The handshake on a fresh stream: greeting, client flags, `NBD_OPT_GO`.
fn handshake(stream: &mut UnixStream, name: &str) -> io::Result<ExportInfo> {
    let mut greeting = [0u8; 18];
    stream.read_exact(&mut greeting)?;
    let server_flags = parse_greeting(&greeting)?;
    let client_flags = u32::from(server_flags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
    stream.write_all(&client_flags.to_be_bytes())?;
    stream.write_all(&go_request(name))?;
    let mut info = ExportInfo {
        size: 0,
        min_block: 1,
        max_request: MAX_REQUEST,
    };
    let mut seen_export = false;
    for _ in 0..MAX_OPTION_REPLIES {
        let mut header = [0u8; 20];
        stream.read_exact(&mut header)?;
        let (kind, len) = parse_option_reply_header(&header, OPT_GO)?;
        let mut data = vec![0u8; len as usize];
        stream.read_exact(&mut data)?;
        match kind {
            REP_ACK if seen_export => return Ok(info),
            REP_ACK => return Err(invalid("NBD server accepted the export without its size")),
            REP_INFO => apply_info(&data, &mut info, &mut seen_export)?,
            kind if kind & REP_ERROR_BIT != 0 => {
                // The session is over; a polite abort, then the error.
                let mut abort = Vec::with_capacity(16);
                abort.extend_from_slice(&IHAVEOPT.to_be_bytes());
                abort.extend_from_slice(&OPT_ABORT.to_be_bytes());
                abort.extend_from_slice(&0u32.to_be_bytes());
                let _ = stream.write_all(&abort);
                return Err(option_error(kind, &data));
            }
            other => return Err(invalid(format!("unexpected NBD option reply {other}"))),
        }
    }
    Err(invalid("the NBD server never finished the handshake"))
}

#[derive(Debug)]
struct Connection {
    stream: UnixStream,
    cookie: u64,
    /// Set when a request failed midway: the stream is out of step.
    broken: bool,
}

/// An image read over NBD: the connection, then the daemon serving it
/// (dropped in that order: we hang up before the daemon is stopped).
#[derive(Debug)]
pub struct NbdSource {
    connection: Mutex<Connection>,
    info: ExportInfo,
    _server: NbdServer,
}

impl NbdSource {
    /// Serves `layers` (the image first, then the backing files
    /// `containment::layers` allowed) read-only and connects to it.
    pub fn start(layers: &[Layer]) -> Result<NbdSource> {
        let (server, mut stream) = NbdServer::start(layers)?;
        let image = layers.first().map(|l| l.path.display().to_string());
        let image = image.unwrap_or_default();
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let info = handshake(&mut stream, NBD_EXPORT)
            .with_context(|| format!("reading {image} through qemu-storage-daemon"))?;
        let source = NbdSource {
            connection: Mutex::new(Connection {
                stream,
                cookie: 0,
                broken: false,
            }),
            info,
            _server: server,
        };
        super::interrupt::pause_point("served")?;
        Ok(source)
    }

    fn read_request(&self, conn: &mut Connection, buf: &mut [u8], offset: u64) -> io::Result<()> {
        conn.cookie += 1;
        let cookie = conn.cookie;
        conn.stream
            .write_all(&request(CMD_READ, cookie, offset, buf.len() as u32))?;
        let mut header = [0u8; 16];
        conn.stream.read_exact(&mut header)?;
        check_simple_reply(&header, cookie)?;
        conn.stream.read_exact(buf)
    }
}

impl BlockSource for NbdSource {
    fn len(&self) -> u64 {
        self.info.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if !in_bounds(offset, buf.len(), self.info.size) {
            return Err(past_end(offset, buf.len(), self.info.size));
        }
        let mut conn = self
            .connection
            .lock()
            .map_err(|_| io::Error::other("the NBD connection was poisoned"))?;
        if conn.broken {
            return Err(io::Error::other("the NBD connection failed earlier"));
        }
        let step = u64::from(self.info.max_request);
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let wanted = (buf.len() - done) as u64;
            let (start, len) = aligned(at, wanted.min(step), self.info.min_block, self.info.size);
            let len = len.min(step);
            let result = if start == at && len <= wanted {
                let len = len as usize;
                self.read_request(&mut conn, &mut buf[done..done + len], start)
                    .map(|()| len)
            } else {
                // An unaligned edge: read whole blocks, keep the middle.
                let mut block = vec![0u8; len as usize];
                self.read_request(&mut conn, &mut block, start).map(|()| {
                    let skip = (at - start) as usize;
                    let n = (block.len() - skip).min(buf.len() - done);
                    buf[done..done + n].copy_from_slice(&block[skip..skip + n]);
                    n
                })
            };
            match result {
                Ok(0) => {
                    conn.broken = true;
                    return Err(io::Error::other("the NBD server returned no bytes"));
                }
                Ok(n) => done += n,
                Err(e) => {
                    // A server error (errno) keeps the stream in step; anything
                    // else may have left half a reply on it.
                    if e.raw_os_error().is_none() {
                        conn.broken = true;
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if !self.broken {
            let _ = self
                .stream
                .write_all(&request(CMD_DISC, self.cookie + 1, 0, 0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_header(option: u32, kind: u32, len: u32) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[0..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        h[8..12].copy_from_slice(&option.to_be_bytes());
        h[12..16].copy_from_slice(&kind.to_be_bytes());
        h[16..20].copy_from_slice(&len.to_be_bytes());
        h
    }

    #[test]
    fn the_go_request_names_the_export_and_asks_for_block_sizes() {
        let r = go_request("image");
        assert_eq!(&r[0..8], b"IHAVEOPT");
        assert_eq!(u32::from_be_bytes(r[8..12].try_into().unwrap()), OPT_GO);
        let len = u32::from_be_bytes(r[12..16].try_into().unwrap()) as usize;
        assert_eq!(r.len(), 16 + len);
        assert_eq!(&r[16..20], &5u32.to_be_bytes());
        assert_eq!(&r[20..25], b"image");
        assert_eq!(&r[25..29], &[0, 1, 0, 3]);
    }

    #[test]
    fn a_greeting_must_be_fixed_newstyle() {
        let mut g = [0u8; 18];
        g[0..8].copy_from_slice(b"NBDMAGIC");
        g[8..16].copy_from_slice(b"IHAVEOPT");
        g[17] = 3;
        assert_eq!(parse_greeting(&g).unwrap(), 3);
        g[17] = 2;
        assert!(parse_greeting(&g).is_err());
        g[17] = 1;
        g[0] = b'X';
        assert!(parse_greeting(&g).is_err());
    }

    #[test]
    fn option_replies_are_checked_and_capped() {
        assert_eq!(
            parse_option_reply_header(&reply_header(OPT_GO, REP_INFO, 12), OPT_GO).unwrap(),
            (REP_INFO, 12)
        );
        assert!(parse_option_reply_header(&reply_header(1, REP_ACK, 0), OPT_GO).is_err());
        assert!(
            parse_option_reply_header(&reply_header(OPT_GO, REP_ACK, u32::MAX), OPT_GO).is_err()
        );
        let mut bad = reply_header(OPT_GO, REP_ACK, 0);
        bad[3] ^= 1;
        assert!(parse_option_reply_header(&bad, OPT_GO).is_err());
    }

    #[test]
    fn infos_set_the_size_and_sane_block_sizes_only() {
        let mut info = ExportInfo {
            size: 0,
            min_block: 1,
            max_request: MAX_REQUEST,
        };
        let mut seen = false;
        let mut export = vec![0, 0];
        export.extend_from_slice(&(10u64 << 30).to_be_bytes());
        export.extend_from_slice(&[0, 3]);
        apply_info(&export, &mut info, &mut seen).unwrap();
        assert!(seen);
        assert_eq!(info.size, 10 << 30);
        assert!(apply_info(&export[..11], &mut info, &mut seen).is_err());

        let sizes = |min: u32, pref: u32, max: u32| {
            let mut d = vec![0, 3];
            for v in [min, pref, max] {
                d.extend_from_slice(&v.to_be_bytes());
            }
            d
        };
        apply_info(&sizes(512, 4096, u32::MAX), &mut info, &mut seen).unwrap();
        assert_eq!((info.min_block, info.max_request), (512, MAX_REQUEST));
        apply_info(&sizes(4096, 4096, 10_000), &mut info, &mut seen).unwrap();
        assert_eq!((info.min_block, info.max_request), (4096, 8192));
        assert!(apply_info(&sizes(3, 4096, 1 << 20), &mut info, &mut seen).is_err());
        assert!(apply_info(&sizes(1 << 20, 1 << 20, 1 << 20), &mut info, &mut seen).is_err());
        assert!(apply_info(&sizes(4096, 4096, 512), &mut info, &mut seen).is_err());
        // Unknown info types are skipped; a payload without a type is not.
        apply_info(&[0, 9, 1, 2], &mut info, &mut seen).unwrap();
        assert!(apply_info(&[0], &mut info, &mut seen).is_err());
    }

    #[test]
    fn errors_say_what_the_server_said() {
        let e = option_error(REP_ERROR_BIT | 6, b"export 'x' not present");
        assert!(
            e.to_string()
                .contains("unknown export: export 'x' not present")
        );
        assert_eq!(
            option_error(REP_ERROR_BIT | 1, b"").to_string(),
            "NBD server: option not supported"
        );
    }

    #[test]
    fn requests_and_replies_round_trip_their_fields() {
        let r = request(CMD_READ, 7, 1 << 40, 4096);
        assert_eq!(&r[0..4], &REQUEST_MAGIC.to_be_bytes());
        assert_eq!(&r[4..8], &[0, 0, 0, 0]);
        assert_eq!(u64::from_be_bytes(r[8..16].try_into().unwrap()), 7);
        assert_eq!(u64::from_be_bytes(r[16..24].try_into().unwrap()), 1 << 40);
        assert_eq!(u32::from_be_bytes(r[24..28].try_into().unwrap()), 4096);

        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        h[8..16].copy_from_slice(&7u64.to_be_bytes());
        check_simple_reply(&h, 7).unwrap();
        assert!(check_simple_reply(&h, 8).is_err());
        h[4..8].copy_from_slice(&5u32.to_be_bytes());
        assert_eq!(
            check_simple_reply(&h, 7).unwrap_err().raw_os_error(),
            Some(5)
        );
        h[0] = 0;
        assert!(
            check_simple_reply(&h, 7)
                .unwrap_err()
                .raw_os_error()
                .is_none()
        );
    }

    #[test]
    fn unaligned_reads_widen_to_whole_blocks_inside_the_disk() {
        assert_eq!(aligned(100, 10, 1, 1000), (100, 10));
        assert_eq!(aligned(100, 10, 512, 4096), (0, 512));
        assert_eq!(aligned(510, 4, 512, 4096), (0, 1024));
        assert_eq!(aligned(4000, 96, 512, 4096), (3584, 512));
        assert_eq!(aligned(1024, 512, 512, 4096), (1024, 512));
    }
}
