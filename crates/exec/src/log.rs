//! Bounded per-execution logs. Output goes to `NAME.log`; when that file reaches half the
//! limit it becomes `NAME.log.1` (replacing an older one) and a new `NAME.log` starts, so a
//! log never takes more than the limit on disk and always holds the latest output: its tail.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub struct LogSink {
    path: PathBuf,
    half: u64,
    file: File,
    written: u64,
    rotations: u64,
    dropped: u64,
}

fn older(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

fn marker(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".dropped");
    PathBuf::from(p)
}

impl LogSink {
    /// Creates (truncates) the log at `path`, keeping at most `max_bytes` of it.
    pub fn create(path: &Path, max_bytes: u64) -> io::Result<LogSink> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let _ = fs::remove_file(older(path));
        let _ = fs::remove_file(marker(path));
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        Ok(LogSink {
            path: path.to_path_buf(),
            half: (max_bytes / 2).max(1024),
            file,
            written: 0,
            rotations: 0,
            dropped: 0,
        })
    }

    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let room = (self.half - self.written) as usize;
            let n = room.min(data.len());
            self.file.write_all(&data[..n])?;
            self.written += n as u64;
            data = &data[n..];
            if self.written >= self.half {
                self.rotate()?;
            }
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let old = older(&self.path);
        if self.rotations > 0 {
            self.dropped += fs::metadata(&old).map(|m| m.len()).unwrap_or(0);
            fs::write(marker(&self.path), self.dropped.to_string())?;
        }
        fs::rename(&self.path, &old)?;
        self.file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.written = 0;
        self.rotations += 1;
        Ok(())
    }
}

/// The last `max_bytes` of a log written by `LogSink`, as text, with a first line saying how
/// much earlier output was dropped, if any. `None` when there is no log.
pub fn read_tail(path: &Path, max_bytes: u64) -> io::Result<Option<String>> {
    let current = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    let cur_len = current.metadata()?.len();
    let mut skipped: u64 = fs::read_to_string(marker(path))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if cur_len < max_bytes
        && let Ok(mut old) = File::open(older(path))
    {
        let old_len = old.metadata()?.len();
        let want = (max_bytes - cur_len).min(old_len);
        old.seek(SeekFrom::Start(old_len - want))?;
        old.read_to_end(&mut bytes)?;
        skipped += old_len - want;
    }
    let mut current = current;
    let want = cur_len.min(max_bytes);
    current.seek(SeekFrom::Start(cur_len - want))?;
    current.read_to_end(&mut bytes)?;
    skipped += cur_len - want;
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if skipped > 0 {
        text.insert_str(
            0,
            &format!("[jobward: {skipped} earlier bytes not shown]\n"),
        );
    }
    Ok(Some(text))
}

/// Removes a log and its rotated part.
pub fn remove(path: &Path) {
    let _ = fs::remove_file(path);
    let _ = fs::remove_file(older(path));
    let _ = fs::remove_file(marker(path));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_tail_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let mut sink = LogSink::create(&path, 4096).unwrap();
        for i in 0..1000 {
            sink.write(format!("line {i:04}\n").as_bytes()).unwrap();
        }
        let on_disk =
            fs::metadata(&path).unwrap().len() + fs::metadata(older(&path)).unwrap().len();
        assert!(on_disk <= 4096, "{on_disk}");
        let tail = read_tail(&path, 4096).unwrap().unwrap();
        assert!(tail.ends_with("line 0999\n"));
        assert!(tail.starts_with("[jobward: "), "{}", &tail[..60]);
        let shown = tail.lines().skip(1).count();
        assert!(
            shown > 300,
            "at least half the limit of tail is kept: {shown}"
        );
        let small = read_tail(&path, 20).unwrap().unwrap();
        assert!(small.ends_with("line 0998\nline 0999\n"), "{small}");
    }

    #[test]
    fn a_short_log_is_shown_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("y.log");
        let mut sink = LogSink::create(&path, 1 << 20).unwrap();
        sink.write(b"hello\n").unwrap();
        assert_eq!(read_tail(&path, 1000).unwrap().unwrap(), "hello\n");
        assert_eq!(read_tail(&dir.path().join("none.log"), 10).unwrap(), None);
    }
}
