//! A newc (`070701`) cpio archive, the format the kernel unpacks an initramfs from
//! (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Entries are kept by path and written in path order, so that every folder comes before what
//! it holds: the kernel's unpacker does not create missing parents. File contents are streamed
//! from their source at write time.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

#[derive(Debug)]
enum Entry {
    Dir,
    File { source: Source, mode: u32 },
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

#[derive(Debug)]
enum Source {
    Bytes(Vec<u8>),
    Path(PathBuf),
}

/// An archive being assembled; paths are absolute in the booted system (`/bin/sh`).
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

/// `/a/b/` as the archive names it: `a/b`.
fn key(path: &str) -> String {
    path.trim_matches('/').to_owned()
}

impl Archive {
    /// Adds folder `path` and its parents.
    pub fn dir(&mut self, path: &str) {
        let key = key(path);
        let mut at = 0;
        while let Some(i) = key[at..].find('/') {
            self.entries
                .entry(key[..at + i].to_owned())
                .or_insert(Entry::Dir);
            at += i + 1;
        }
        if !key.is_empty() {
            self.entries.entry(key).or_insert(Entry::Dir);
        }
    }

    fn parent(&mut self, path: &str) {
        if let Some((parent, _)) = key(path).rsplit_once('/') {
            self.dir(parent);
        }
    }

    /// Adds file `path` with `data` and permission bits `mode`.
    pub fn bytes(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) {
        self.parent(path);
        let source = Source::Bytes(data.into());
        self.entries.insert(key(path), Entry::File { source, mode });
    }

    /// Adds file `path` with the contents of host file `source` (read when the archive is
    /// written) and permission bits `mode`.
    pub fn copy(&mut self, path: &str, source: &Path, mode: u32) {
        self.parent(path);
        let source = Source::Path(source.to_owned());
        self.entries.insert(key(path), Entry::File { source, mode });
    }

    /// Adds symbolic link `path` pointing at `target`, unless `path` is taken.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parent(path);
        self.entries
            .entry(key(path))
            .or_insert_with(|| Entry::Symlink(target.to_owned()));
    }

    /// Adds character device `path` (`major`, `minor`).
    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) {
        self.parent(path);
        self.entries
            .insert(key(path), Entry::CharDev { major, minor });
    }

    /// Writes the archive to `path`.
    pub fn write_to(&self, path: &Path) -> Result<()> {
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = Writer {
            out: io::BufWriter::new(file),
            written: 0,
        };
        for (ino, (name, entry)) in (1u32..).zip(&self.entries) {
            match entry {
                Entry::Dir => out.header(ino, S_IFDIR | 0o755, 0, (0, 0), name)?,
                Entry::CharDev { major, minor } => {
                    out.header(ino, S_IFCHR | 0o600, 0, (*major, *minor), name)?;
                }
                Entry::Symlink(target) => {
                    out.header(ino, S_IFLNK | 0o777, len(target.len())?, (0, 0), name)?;
                    out.data(target.as_bytes())?;
                    out.pad()?;
                }
                Entry::File {
                    source: Source::Bytes(data),
                    mode,
                } => {
                    out.header(ino, S_IFREG | mode, len(data.len())?, (0, 0), name)?;
                    out.data(data)?;
                    out.pad()?;
                }
                Entry::File {
                    source: Source::Path(source),
                    mode,
                } => {
                    let mut file = File::open(source)
                        .with_context(|| format!("cannot open {}", source.display()))?;
                    let size = file.metadata()?.len();
                    let Ok(size32) = u32::try_from(size) else {
                        bail!("{} is too big for a cpio archive", source.display());
                    };
                    out.header(ino, S_IFREG | mode, size32, (0, 0), name)?;
                    let copied = io::copy(&mut file, &mut out.out)
                        .with_context(|| format!("cannot read {}", source.display()))?;
                    if copied != size {
                        bail!("{} changed while it was archived", source.display());
                    }
                    out.written += copied;
                    out.pad()?;
                }
            }
        }
        out.header(0, 0, 0, (0, 0), "TRAILER!!!")?;
        out.out
            .flush()
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

fn len(n: usize) -> Result<u32> {
    u32::try_from(n).context("an entry too big for a cpio archive")
}

struct Writer {
    out: io::BufWriter<File>,
    written: u64,
}

impl Writer {
    /// One header and the name; every field is 8 hex digits. Owner root, mtime 0 (the archive
    /// is the same for the same inputs), one link each.
    fn header(
        &mut self,
        ino: u32,
        mode: u32,
        size: u32,
        (rdev_major, rdev_minor): (u32, u32),
        name: &str,
    ) -> io::Result<()> {
        let name_size = name.len() + 1;
        let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, dev major and minor, rdev major
        // and minor, name size (with its NUL), check.
        let zero = 0u32;
        let header = format!(
            "070701{ino:08x}{mode:08x}{zero:08x}{zero:08x}{nlink:08x}{zero:08x}{size:08x}\
             {zero:08x}{zero:08x}{rdev_major:08x}{rdev_minor:08x}{name_size:08x}{zero:08x}"
        );
        self.data(header.as_bytes())?;
        self.data(name.as_bytes())?;
        self.data(&[0])?;
        self.pad()
    }

    fn data(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Zeroes up to the next multiple of 4 bytes.
    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - self.written % 4) % 4;
        self.data(&[0; 3][..usize::try_from(n).expect("below 4")])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_first_and_aligned() {
        let dir = std::env::temp_dir().join(format!("xtask-cpio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.cpio");
        let mut a = Archive::default();
        a.bytes("/usr/bin/x", b"abcde".to_vec(), 0o755);
        a.symlink("/bin/sh", "busybox");
        a.char_dev("/dev/console", 5, 1);
        a.write_to(&path).unwrap();
        let data = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        // Walk the archive as the kernel does.
        let mut names = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(at % 4, 0);
            let h = std::str::from_utf8(&data[at..at + 110]).unwrap();
            assert_eq!(&h[..6], "070701");
            let field = |i: usize| u32::from_str_radix(&h[6 + i * 8..14 + i * 8], 16).unwrap();
            let (size, name_size) = (field(6) as usize, field(11) as usize);
            let name = std::str::from_utf8(&data[at + 110..at + 110 + name_size - 1]).unwrap();
            names.push(name.to_owned());
            let body = (at + 110 + name_size).next_multiple_of(4);
            if name == "usr/bin/x" {
                assert_eq!(&data[body..body + size], b"abcde");
                assert_eq!(field(1), S_IFREG | 0o755);
            }
            if name == "dev/console" {
                assert_eq!((field(9), field(10)), (5, 1));
            }
            if name == "TRAILER!!!" {
                break;
            }
            at = (body + size).next_multiple_of(4);
        }
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "usr",
                "usr/bin",
                "usr/bin/x",
                "TRAILER!!!"
            ]
        );
    }
}
