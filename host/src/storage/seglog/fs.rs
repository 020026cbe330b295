//! The few file-system operations the log needs, behind a trait so tests
//! can run the log over [`SimFs`], a file system that loses power.
//!
//! The log's durability argument rests on exactly these calls: data is
//! durable after [`LogFile::sync_data`], a new or removed directory entry
//! after [`LogFs::sync_dir`]. [`SimFs`] keeps nothing else across a
//! [`SimFs::power_cut`], so a test over it shows the log never relies on
//! anything more.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One open segment file. Every method takes `&self`: the writer thread
/// appends while readers `pread` durable records.
#[allow(clippy::len_without_is_empty)] // a file, not a collection
pub trait LogFile: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every write so far durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Cuts the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file's current length.
    fn len(&self) -> io::Result<u64>;
}

/// The directory operations of the log.
pub trait LogFs: Send + Sync {
    /// Creates `dir` (and its parents) if missing, private to the user.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates a new file, failing if it exists.
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn LogFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn LogFile>>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFs;

impl LogFile for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        std::fs::File::sync_data(self)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        std::fs::File::set_len(self, len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl LogFs for OsFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        Ok(Arc::new(file))
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Arc::new(file))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

/// A file system in memory that can lose power: a test shim for the
/// log's crash tests.
///
/// Each file keeps its current bytes and the bytes as of its last
/// `sync_data`; the directory keeps its current names and the names as of
/// its last `sync_dir`. [`SimFs::power_cut`] throws away everything not
/// made durable that way (optionally keeping a prefix of each file's
/// unsynced tail, as a disk that wrote part of a batch would), and every
/// call fails until [`SimFs::power_on`].
#[derive(Default, Clone)]
pub struct SimFs {
    inner: Arc<Mutex<SimState>>,
}

#[derive(Default)]
struct SimState {
    /// Files by path, as the running system sees them.
    names: BTreeMap<PathBuf, Arc<SimFile>>,
    /// Files whose directory entry is durable.
    durable_names: BTreeMap<PathBuf, Arc<SimFile>>,
    /// Directories that exist.
    dirs: BTreeSet<PathBuf>,
    /// Power is off: every call fails.
    off: bool,
}

#[derive(Default)]
struct SimFile {
    data: Mutex<SimData>,
    fs: std::sync::Weak<Mutex<SimState>>,
}

#[derive(Default, Clone)]
struct SimData {
    current: Vec<u8>,
    durable: Vec<u8>,
}

/// How much of each file's unsynced bytes survive a power cut.
#[derive(Debug, Clone, Copy)]
pub enum Survivors {
    /// None: only what was synced.
    None,
    /// The first `n` bytes past the synced length, where the unsynced
    /// bytes extend the synced ones (a torn append).
    Prefix(u64),
}

fn powered_off() -> io::Error {
    io::Error::other("simulated power loss")
}

impl SimFs {
    /// An empty file system with power on.
    pub fn new() -> SimFs {
        SimFs::default()
    }

    fn check_on(&self) -> io::Result<std::sync::MutexGuard<'_, SimState>> {
        let state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if state.off {
            return Err(powered_off());
        }
        Ok(state)
    }

    /// Loses power: files fall back to their synced bytes (plus what
    /// `survivors` keeps), the directory to its synced names.
    pub fn power_cut(&self, survivors: Survivors) {
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        state.off = true;
        let durable = state.durable_names.clone();
        for file in durable.values() {
            let mut data = file.data.lock().unwrap_or_else(|p| p.into_inner());
            let mut kept = data.durable.clone();
            if let Survivors::Prefix(n) = survivors
                && data.current.len() > kept.len()
                && data.current.starts_with(&kept)
            {
                let end = (kept.len() as u64 + n).min(data.current.len() as u64) as usize;
                kept = data.current[..end].to_vec();
            }
            data.current = kept.clone();
            data.durable = kept;
        }
        state.names = durable;
    }

    /// Restores power (after [`SimFs::power_cut`]).
    pub fn power_on(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).off = false;
    }

    /// Overwrites bytes of a file in place, as a failing disk would (and
    /// marks them durable): for corruption tests.
    pub fn corrupt(&self, path: &Path, offset: u64, bytes: &[u8]) {
        let state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let file = state
            .names
            .get(path)
            .expect("corrupting a file that exists");
        let mut data = file.data.lock().unwrap_or_else(|p| p.into_inner());
        let start = offset as usize;
        data.current[start..start + bytes.len()].copy_from_slice(bytes);
        data.durable = data.current.clone();
    }

    /// Cuts a file to `len` bytes durably: for truncation tests.
    pub fn truncate(&self, path: &Path, len: u64) {
        let state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let file = state
            .names
            .get(path)
            .expect("truncating a file that exists");
        let mut data = file.data.lock().unwrap_or_else(|p| p.into_inner());
        data.current.truncate(len as usize);
        data.durable = data.current.clone();
    }

    /// A file's current bytes.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let file = state.names.get(path)?;
        let data = file.data.lock().unwrap_or_else(|p| p.into_inner());
        Some(data.current.clone())
    }

    /// A copy of the whole file system as it is now (for running many
    /// cases from one starting log).
    pub fn snapshot(&self) -> SimFs {
        let state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let copy = SimFs::new();
        {
            let mut new_state = copy.inner.lock().unwrap_or_else(|p| p.into_inner());
            let mut copies: BTreeMap<*const SimFile, Arc<SimFile>> = BTreeMap::new();
            let mut clone_file = |file: &Arc<SimFile>| {
                copies
                    .entry(Arc::as_ptr(file))
                    .or_insert_with(|| {
                        let data = file.data.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        Arc::new(SimFile {
                            data: Mutex::new(data),
                            fs: Arc::downgrade(&copy.inner),
                        })
                    })
                    .clone()
            };
            for (path, file) in &state.names {
                new_state.names.insert(path.clone(), clone_file(file));
            }
            for (path, file) in &state.durable_names {
                new_state
                    .durable_names
                    .insert(path.clone(), clone_file(file));
            }
            new_state.dirs = state.dirs.clone();
            new_state.off = state.off;
        }
        copy
    }
}

impl SimFile {
    fn with<R>(&self, f: impl FnOnce(&mut SimData) -> io::Result<R>) -> io::Result<R> {
        let fs = self.fs.upgrade().ok_or_else(powered_off)?;
        // Held through the operation, so a power cut falls before or
        // after it, never in the middle.
        let state = fs.lock().unwrap_or_else(|p| p.into_inner());
        if state.off {
            return Err(powered_off());
        }
        let mut data = self.data.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut data)
    }
}

impl LogFile for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(|d| {
            let start = offset as usize;
            let end = start + buf.len();
            if end > d.current.len() {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            buf.copy_from_slice(&d.current[start..end]);
            Ok(())
        })
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with(|d| {
            let start = offset as usize;
            if d.current.len() < start + buf.len() {
                d.current.resize(start + buf.len(), 0);
            }
            d.current[start..start + buf.len()].copy_from_slice(buf);
            Ok(())
        })
    }
    fn sync_data(&self) -> io::Result<()> {
        self.with(|d| {
            d.durable = d.current.clone();
            Ok(())
        })
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|d| {
            d.current.resize(len as usize, 0);
            Ok(())
        })
    }
    fn len(&self) -> io::Result<u64> {
        self.with(|d| Ok(d.current.len() as u64))
    }
}

impl LogFs for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Directories are durable at once: the log's own directory is
        // made before the home is used; only files are in question.
        self.check_on()?.dirs.insert(dir.to_path_buf());
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.check_on()?;
        if !state.dirs.contains(dir) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        Ok(state
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        let mut state = self.check_on()?;
        if state.names.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let file = Arc::new(SimFile {
            data: Mutex::new(SimData::default()),
            fs: Arc::downgrade(&self.inner),
        });
        state.names.insert(path.to_path_buf(), file.clone());
        Ok(file)
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        let state = self.check_on()?;
        let file = state
            .names
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(file)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.check_on()?;
        state
            .names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.check_on()?;
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        state.durable_names.retain(|p, _| !in_dir(p));
        let current: Vec<_> = state
            .names
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, f)| (p.clone(), f.clone()))
            .collect();
        state.durable_names.extend(current);
        Ok(())
    }
}
