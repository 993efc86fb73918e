//! A test-only builder of Windows registry hives (regf primary files), so
//! tests can make SYSTEM and SOFTWARE hives without Windows. Used by the
//! registry's unit tests (included with `#[path]`) and by integration tests
//! (`mod common_hive;`); it depends on nothing of the crate, so the reader
//! is never checked against itself. hivex's tools read its output
//! (tests/registry_hivex.rs).
//!
//! Layout: base block, then one hive bin holding every cell, then a free
//! cell to the end of the bin. By default the root key is the first cell,
//! as in hives Windows writes; `root_last` puts it after every other cell.
#![allow(dead_code)]

/// How a key's subkeys are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// `lf`: offset and the first four characters of the name.
    Lf,
    /// `lh`: offset and the name hash (Windows XP and later).
    Lh,
    /// `li`: offsets only.
    Li,
    /// `ri` over `lh` leaves of at most two entries each.
    Ri,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// REG_DWORD stored inline in the value cell, as Windows does.
    Dword(u32),
    /// REG_DWORD in a data cell of its own (legal, unusual).
    DwordInCell(u32),
    Qword(u64),
    Sz(String),
    ExpandSz(String),
    MultiSz(Vec<String>),
    Binary(Vec<u8>),
    /// Any type with these bytes in a data cell.
    Raw(u32, Vec<u8>),
}

#[derive(Debug, Clone, Default)]
pub struct KeySpec {
    pub name: String,
    pub values: Vec<(String, Val)>,
    pub subkeys: Vec<KeySpec>,
    /// Store names as UTF-16LE even when they fit Latin-1.
    pub utf16_name: bool,
}

impl KeySpec {
    pub fn new(name: &str) -> KeySpec {
        KeySpec {
            name: name.to_string(),
            ..KeySpec::default()
        }
    }

    /// The subkey at a backslash-separated path, created as needed
    /// (names matched case-insensitively, like Windows).
    pub fn key_mut(&mut self, path: &str) -> &mut KeySpec {
        let mut key = self;
        for part in path.split('\\').filter(|p| !p.is_empty()) {
            let index = match key
                .subkeys
                .iter()
                .position(|k| k.name.eq_ignore_ascii_case(part))
            {
                Some(i) => i,
                None => {
                    key.subkeys.push(KeySpec::new(part));
                    key.subkeys.len() - 1
                }
            };
            key = &mut key.subkeys[index];
        }
        key
    }
}

/// A hive under construction: a root key and layout choices.
#[derive(Debug, Clone)]
pub struct HiveBuilder {
    pub root: KeySpec,
    pub list_kind: ListKind,
    pub root_last: bool,
    pub sequence: (u32, u32),
    /// Last written FILETIME of the base block and of every key.
    pub timestamp: u64,
    /// The base block's file name field (UTF-16LE, debugging only).
    pub file_name: String,
}

impl Default for HiveBuilder {
    fn default() -> Self {
        HiveBuilder {
            root: KeySpec::new("ROOT"),
            list_kind: ListKind::Lh,
            root_last: false,
            sequence: (7, 7),
            // 2024-01-01T00:00:00Z
            timestamp: 133_485_408_000_000_000,
            file_name: "SYSTEM".into(),
        }
    }
}

impl HiveBuilder {
    pub fn new() -> HiveBuilder {
        HiveBuilder::default()
    }

    /// Adds (or replaces) a value, creating the key path.
    pub fn set(mut self, path: &str, name: &str, val: Val) -> HiveBuilder {
        self.put(path, name, val);
        self
    }

    pub fn put(&mut self, path: &str, name: &str, val: Val) {
        let key = self.root.key_mut(path);
        key.values.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        key.values.push((name.to_string(), val));
    }

    /// Creates a key (without values) at a path.
    pub fn key(mut self, path: &str) -> HiveBuilder {
        self.root.key_mut(path);
        self
    }

    pub fn list_kind(mut self, kind: ListKind) -> HiveBuilder {
        self.list_kind = kind;
        self
    }

    pub fn root_last(mut self) -> HiveBuilder {
        self.root_last = true;
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut cells = Cells::default();
        let security = cells.add(Cell::Security);
        let root = cells.reserve();
        cells.key(
            root,
            &self.root,
            None,
            security,
            self.list_kind,
            self.timestamp,
        );
        cells.security_refs = cells.keys;
        let mut order: Vec<usize> = (0..cells.cells.len()).collect();
        if self.root_last {
            order.retain(|&c| c != root);
            order.push(root);
        } else {
            order.retain(|&c| c != root);
            order.insert(0, root);
        }
        cells.serialize(&order, root, self)
    }
}

/// A hive built from a builder function on a default builder.
pub fn hive(f: impl FnOnce(HiveBuilder) -> HiveBuilder) -> Vec<u8> {
    f(HiveBuilder::new()).build()
}

const BASE_BLOCK_LEN: usize = 4096;
const HBIN_HEADER_LEN: usize = 32;

/// The XOR-32 of the base block's first 508 bytes, 0 and !0 adjusted as
/// Windows does; written at 508.
pub fn fix_checksum(hive: &mut [u8]) {
    let sum = hive[..508]
        .chunks_exact(4)
        .map(|d| u32::from_le_bytes([d[0], d[1], d[2], d[3]]))
        .fold(0u32, |a, d| a ^ d);
    let sum = match sum {
        0 => 1,
        u32::MAX => u32::MAX - 1,
        s => s,
    };
    hive[508..512].copy_from_slice(&sum.to_le_bytes());
}

/// The lh hash: H = 37 * H + c over the uppercased UTF-16 units.
pub fn name_hash(name: &str) -> u32 {
    name.to_uppercase()
        .encode_utf16()
        .fold(0u32, |h, c| h.wrapping_mul(37).wrapping_add(u32::from(c)))
}

fn fits_latin1(name: &str) -> bool {
    name.chars().all(|c| (c as u32) < 0x100)
}

fn name_bytes(name: &str, utf16: bool) -> (Vec<u8>, bool) {
    if !utf16 && fits_latin1(name) {
        (name.chars().map(|c| c as u8).collect(), true)
    } else {
        (
            name.encode_utf16().flat_map(u16::to_le_bytes).collect(),
            false,
        )
    }
}

fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect()
}

#[derive(Debug, Clone)]
struct KeyCell {
    name: Vec<u8>,
    compressed: bool,
    root: bool,
    parent: Option<usize>,
    subkeys: Option<(usize, usize)>,
    values: Option<(usize, usize)>,
    security: usize,
    timestamp: u64,
    max_subkey_name: u32,
    max_value_name: u32,
    max_value_data: u32,
}

/// A cell's content; references are indexes into `Cells::cells`,
/// resolved to offsets when serialized.
#[derive(Debug, Clone)]
enum Cell {
    Reserved,
    Security,
    Key(KeyCell),
    Value {
        name: Vec<u8>,
        compressed: bool,
        kind: u32,
        size: u32,
        data: Result<[u8; 4], usize>,
    },
    ValueList(Vec<usize>),
    Leaf {
        signature: [u8; 2],
        entries: Vec<(usize, [u8; 4])>,
    },
    IndexRoot(Vec<usize>),
    Data(Vec<u8>),
}

#[derive(Default)]
struct Cells {
    cells: Vec<Cell>,
    keys: u32,
    security_refs: u32,
}

impl Cells {
    fn add(&mut self, cell: Cell) -> usize {
        self.cells.push(cell);
        self.cells.len() - 1
    }

    fn reserve(&mut self) -> usize {
        self.add(Cell::Reserved)
    }

    fn key(
        &mut self,
        me: usize,
        spec: &KeySpec,
        parent: Option<usize>,
        security: usize,
        list_kind: ListKind,
        timestamp: u64,
    ) {
        self.keys += 1;
        let (name, compressed) = name_bytes(&spec.name, spec.utf16_name);
        // Values.
        let mut value_cells = Vec::new();
        let mut max_value_name = 0;
        let mut max_value_data = 0;
        for (value_name, val) in &spec.values {
            let (vname, vcomp) = name_bytes(value_name, false);
            max_value_name = max_value_name.max(value_name.encode_utf16().count() as u32 * 2);
            let (kind, bytes, inline) = match val {
                Val::Dword(n) => (4, n.to_le_bytes().to_vec(), true),
                Val::DwordInCell(n) => (4, n.to_le_bytes().to_vec(), false),
                Val::Qword(n) => (11, n.to_le_bytes().to_vec(), false),
                Val::Sz(s) => (1, utf16z(s), false),
                Val::ExpandSz(s) => (2, utf16z(s), false),
                Val::MultiSz(list) => {
                    let mut b: Vec<u8> = list.iter().flat_map(|s| utf16z(s)).collect();
                    b.extend([0, 0]);
                    (7, b, false)
                }
                Val::Binary(b) => (3, b.clone(), false),
                Val::Raw(kind, b) => (*kind, b.clone(), false),
            };
            max_value_data = max_value_data.max(bytes.len() as u32);
            let cell = if inline {
                let mut four = [0u8; 4];
                four[..bytes.len()].copy_from_slice(&bytes);
                Cell::Value {
                    name: vname,
                    compressed: vcomp,
                    kind,
                    size: 0x8000_0000 | bytes.len() as u32,
                    data: Ok(four),
                }
            } else {
                let size = bytes.len() as u32;
                let data = self.add(Cell::Data(bytes));
                Cell::Value {
                    name: vname,
                    compressed: vcomp,
                    kind,
                    size,
                    data: Err(data),
                }
            };
            value_cells.push(self.add(cell));
        }
        let values = (!value_cells.is_empty()).then(|| {
            (
                self.add(Cell::ValueList(value_cells.clone())),
                value_cells.len(),
            )
        });

        // Subkeys, sorted by uppercase name as Windows keeps them.
        let mut children: Vec<&KeySpec> = spec.subkeys.iter().collect();
        children.sort_by_key(|k| k.name.to_uppercase());
        let child_cells: Vec<usize> = children.iter().map(|_| self.reserve()).collect();
        for (child, &cell) in children.iter().zip(&child_cells) {
            self.key(cell, child, Some(me), security, list_kind, timestamp);
        }
        let entry = |cell: usize, child: &KeySpec| -> (usize, [u8; 4]) {
            match list_kind {
                ListKind::Lf => {
                    let mut hint = [0u8; 4];
                    for (h, c) in hint.iter_mut().zip(child.name.chars()) {
                        *h = c as u8;
                    }
                    (cell, hint)
                }
                _ => (cell, name_hash(&child.name).to_le_bytes()),
            }
        };
        let subkeys = if child_cells.is_empty() {
            None
        } else {
            let entries: Vec<(usize, [u8; 4])> = children
                .iter()
                .zip(&child_cells)
                .map(|(c, &cell)| entry(cell, c))
                .collect();
            let list = match list_kind {
                ListKind::Lf => self.add(Cell::Leaf {
                    signature: *b"lf",
                    entries,
                }),
                ListKind::Lh => self.add(Cell::Leaf {
                    signature: *b"lh",
                    entries,
                }),
                ListKind::Li => self.add(Cell::Leaf {
                    signature: *b"li",
                    entries,
                }),
                ListKind::Ri => {
                    let leaves: Vec<usize> = entries
                        .chunks(2)
                        .map(|chunk| {
                            self.add(Cell::Leaf {
                                signature: *b"lh",
                                entries: chunk.to_vec(),
                            })
                        })
                        .collect();
                    self.add(Cell::IndexRoot(leaves))
                }
            };
            Some((list, child_cells.len()))
        };
        let max_subkey_name = children
            .iter()
            .map(|c| c.name.encode_utf16().count() as u32 * 2)
            .max()
            .unwrap_or(0);
        self.cells[me] = Cell::Key(KeyCell {
            name,
            compressed,
            root: parent.is_none(),
            parent,
            subkeys,
            values,
            security,
            timestamp,
            max_subkey_name,
            max_value_name,
            max_value_data,
        });
    }

    fn serialize(&self, order: &[usize], root: usize, builder: &HiveBuilder) -> Vec<u8> {
        // Sizes first (they do not depend on offsets), then offsets.
        let no_offsets = vec![0; self.cells.len()];
        let sizes: Vec<usize> = self
            .cells
            .iter()
            .map(|c| (4 + self.content(c, &no_offsets).len()).next_multiple_of(8))
            .collect();
        let mut offsets = vec![0u32; self.cells.len()];
        let mut at = HBIN_HEADER_LEN;
        for &c in order {
            offsets[c] = at as u32;
            at += sizes[c];
        }
        // Leave room for a free cell of at least 8 bytes at the end.
        let bin_size = (at + 8).next_multiple_of(4096);
        let mut bins = vec![0u8; bin_size];
        bins[..4].copy_from_slice(b"hbin");
        bins[8..12].copy_from_slice(&(bin_size as u32).to_le_bytes());
        bins[20..28].copy_from_slice(&builder.timestamp.to_le_bytes());
        for &c in order {
            let o = offsets[c] as usize;
            let data = self.content(&self.cells[c], &offsets);
            bins[o..o + 4].copy_from_slice(&(-(sizes[c] as i32)).to_le_bytes());
            bins[o + 4..o + 4 + data.len()].copy_from_slice(&data);
        }
        bins[at..at + 4].copy_from_slice(&((bin_size - at) as i32).to_le_bytes());

        let mut hive = vec![0u8; BASE_BLOCK_LEN];
        hive[..4].copy_from_slice(b"regf");
        hive[4..8].copy_from_slice(&builder.sequence.0.to_le_bytes());
        hive[8..12].copy_from_slice(&builder.sequence.1.to_le_bytes());
        hive[12..20].copy_from_slice(&builder.timestamp.to_le_bytes());
        hive[20..24].copy_from_slice(&1u32.to_le_bytes()); // major version
        hive[24..28].copy_from_slice(&5u32.to_le_bytes()); // minor version
        hive[28..32].copy_from_slice(&0u32.to_le_bytes()); // primary file
        hive[32..36].copy_from_slice(&1u32.to_le_bytes()); // direct memory load
        hive[36..40].copy_from_slice(&offsets[root].to_le_bytes());
        hive[40..44].copy_from_slice(&(bin_size as u32).to_le_bytes());
        hive[44..48].copy_from_slice(&1u32.to_le_bytes()); // clustering factor
        let file_name: Vec<u8> = builder
            .file_name
            .encode_utf16()
            .take(31)
            .flat_map(u16::to_le_bytes)
            .collect();
        hive[48..48 + file_name.len()].copy_from_slice(&file_name);
        fix_checksum(&mut hive);
        hive.extend(bins);
        hive
    }

    fn content(&self, cell: &Cell, offsets: &[u32]) -> Vec<u8> {
        let off = |c: usize| offsets[c];
        let mut d = Vec::new();
        match cell {
            Cell::Reserved => unreachable!("every reserved cell becomes a key"),
            Cell::Security => {
                // A minimal self-relative security descriptor (revision 1,
                // SE_SELF_RELATIVE, no owner, group, SACL or DACL): a
                // well-formed `sk` whose list points at itself.
                let me = self
                    .cells
                    .iter()
                    .position(|c| matches!(c, Cell::Security))
                    .unwrap();
                let descriptor = [
                    1u8, 0, 0x00, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ];
                d.extend(b"sk");
                d.extend([0, 0]);
                d.extend(off(me).to_le_bytes());
                d.extend(off(me).to_le_bytes());
                d.extend(self.security_refs.to_le_bytes());
                d.extend((descriptor.len() as u32).to_le_bytes());
                d.extend(descriptor);
            }
            Cell::Key(key) => {
                let mut flags: u16 = if key.compressed { 0x20 } else { 0 };
                if key.root {
                    flags |= 0x04 | 0x08;
                }
                d.extend(b"nk");
                d.extend(flags.to_le_bytes());
                d.extend(key.timestamp.to_le_bytes());
                d.extend(0u32.to_le_bytes()); // access bits
                d.extend(key.parent.map_or(0xFFFF_FFFF, off).to_le_bytes());
                d.extend((key.subkeys.map_or(0, |s| s.1) as u32).to_le_bytes());
                d.extend(0u32.to_le_bytes()); // volatile subkeys
                d.extend(key.subkeys.map_or(0xFFFF_FFFF, |s| off(s.0)).to_le_bytes());
                d.extend(0xFFFF_FFFFu32.to_le_bytes()); // volatile list
                d.extend((key.values.map_or(0, |v| v.1) as u32).to_le_bytes());
                d.extend(key.values.map_or(0xFFFF_FFFF, |v| off(v.0)).to_le_bytes());
                d.extend(off(key.security).to_le_bytes());
                d.extend(0xFFFF_FFFFu32.to_le_bytes()); // no class name
                d.extend(key.max_subkey_name.to_le_bytes());
                d.extend(0u32.to_le_bytes()); // largest class name
                d.extend(key.max_value_name.to_le_bytes());
                d.extend(key.max_value_data.to_le_bytes());
                d.extend(0u32.to_le_bytes()); // workvar
                d.extend((key.name.len() as u16).to_le_bytes());
                d.extend(0u16.to_le_bytes()); // class name length
                d.extend(&key.name);
            }
            Cell::Value {
                name,
                compressed,
                kind,
                size,
                data,
            } => {
                d.extend(b"vk");
                d.extend((name.len() as u16).to_le_bytes());
                d.extend(size.to_le_bytes());
                match data {
                    Ok(four) => d.extend(four),
                    Err(cell) => d.extend(off(*cell).to_le_bytes()),
                }
                d.extend(kind.to_le_bytes());
                d.extend(u16::from(*compressed).to_le_bytes());
                d.extend(0u16.to_le_bytes());
                d.extend(name);
            }
            Cell::ValueList(list) => {
                for &c in list {
                    d.extend(off(c).to_le_bytes());
                }
            }
            Cell::Leaf { signature, entries } => {
                d.extend(signature);
                d.extend((entries.len() as u16).to_le_bytes());
                for (c, extra) in entries {
                    d.extend(off(*c).to_le_bytes());
                    if signature != b"li" {
                        d.extend(extra);
                    }
                }
            }
            Cell::IndexRoot(leaves) => {
                d.extend(b"ri");
                d.extend((leaves.len() as u16).to_le_bytes());
                for &c in leaves {
                    d.extend(off(c).to_le_bytes());
                }
            }
            Cell::Data(bytes) => d.extend(bytes),
        }
        d
    }
}

/// The cloudbase-init service's key in the builder's control set.
pub const CLOUDBASE_SERVICE: &str = "ControlSet001\\Services\\cloudbase-init";
/// Where an installed Cloudbase-Init keeps one instance's plugin states.
pub const CLOUDBASE_PLUGINS: &str = "Cloudbase Solutions\\Cloudbase-Init\\i-abc123\\Plugins";

/// A SYSTEM hive as the guide wants it: the service Automatic as Local
/// System, started by the installer's executable, the CD-ROM driver on.
/// Tests add what their check looks at.
pub fn well_prepared_system() -> HiveBuilder {
    HiveBuilder::new()
        .set("Select", "Current", Val::Dword(1))
        .set(CLOUDBASE_SERVICE, "Start", Val::Dword(2))
        .set(CLOUDBASE_SERVICE, "ObjectName", Val::Sz("LocalSystem".into()))
        .set(
            CLOUDBASE_SERVICE,
            "ImagePath",
            Val::ExpandSz("\"C:\\Program Files\\Cloudbase Solutions\\Cloudbase-Init\\Python\\Scripts\\cloudbase-init.exe\"".into()),
        )
        .set("ControlSet001\\Services\\cdrom", "Start", Val::Dword(1))
}

/// A SOFTWARE hive as the guide wants it: LocalScriptsPlugin stored as 2,
/// the policies key present and denying nothing.
pub fn well_prepared_software() -> HiveBuilder {
    let mut b = HiveBuilder::new();
    b.file_name = "SOFTWARE".into();
    b.set(CLOUDBASE_PLUGINS, "LocalScriptsPlugin", Val::Dword(2))
        .key("Policies\\Microsoft\\Windows")
}
