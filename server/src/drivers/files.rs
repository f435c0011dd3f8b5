//! The files the runtimes keep under the state directory: directories, logs and records, all
//! readable by Baton's user only.
//!
//! A backend's log holds whatever the application prints (connection strings, tokens in a stack
//! trace), and a record says which process to signal; neither is for other users of the machine.
//! So directories Baton creates are 0700 and files 0600, set when they are created (before a
//! byte is written) rather than fixed afterwards. Files and directories that already exist keep
//! the mode they have: an operator who loosened one on purpose is not overruled.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// The mode of the directories Baton creates.
pub const DIR_MODE: u32 = 0o700;
/// The mode of the files Baton creates.
pub const FILE_MODE: u32 = 0o600;
/// A log at least this large when a new run starts is moved to `<log>.1` (replacing the one
/// before), so deploys and restarts keep at most two logs per backend.
pub const ROTATE_LOG_AT: u64 = 16 * 1024 * 1024;

/// Creates `path` and any missing parents, each with [`DIR_MODE`].
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Opens the log at `path` for appending, creating it with [`FILE_MODE`]; first moves it to
/// `<path>.1` if it holds [`ROTATE_LOG_AT`] bytes or more.
pub fn open_log(path: &Path) -> io::Result<File> {
    rotate_log(path, ROTATE_LOG_AT)?;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Creates `path` afresh with [`FILE_MODE`] for writing, replacing any file there (whose mode
/// would otherwise be kept).
pub fn create_private_file(path: &Path) -> io::Result<File> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
}

/// The last `lines` lines of the file at `path`, oldest first, read from at most its last
/// [`TAIL_BYTES`] (a long first line comes back cut at its start); `None` if there is no file.
/// Bytes that are not UTF-8 are replaced, so a binary log still reads.
pub fn tail_lines(path: &Path, lines: usize) -> io::Result<Option<Vec<String>>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let length = file.metadata()?.len();
    let from = length.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::with_capacity((length - from) as usize);
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    let kept = &all[all.len().saturating_sub(lines)..];
    Ok(Some(kept.iter().map(|line| (*line).to_owned()).collect()))
}

/// [`tail_lines`] off the async threads, as a runtime's answer: the log at `path` on this
/// machine, its lines passed through `mask` (a command runtime hides its secrets).
pub async fn local_tail(
    path: std::path::PathBuf,
    lines: usize,
    mask: impl Fn(String) -> String + Send + 'static,
) -> Result<Option<super::LogTail>, super::RuntimeError> {
    let read = tokio::task::spawn_blocking(move || {
        let tail = tail_lines(&path, lines);
        (path, tail)
    })
    .await;
    match read {
        Ok((path, Ok(tail))) => Ok(tail.map(|lines| super::LogTail {
            source: path.display().to_string(),
            lines: lines.into_iter().map(mask).collect(),
        })),
        Ok((path, Err(error))) => Err(super::RuntimeError::Other(format!(
            "cannot read {}: {error}",
            path.display()
        ))),
        Err(error) => Err(super::RuntimeError::Other(format!(
            "reading a log failed: {error}"
        ))),
    }
}

/// How far back from a log's end [`tail_lines`] reads: 200 lines of a chatty application.
pub const TAIL_BYTES: u64 = 256 * 1024;

/// Moves the log at `path` to `path.1` if it holds `limit` bytes or more.
fn rotate_log(path: &Path, limit: u64) -> io::Result<()> {
    match fs::metadata(path) {
        Ok(meta) if meta.len() >= limit => {
            let mut old = path.as_os_str().to_owned();
            old.push(".1");
            fs::rename(path, old)
        }
        Ok(_) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_tail_is_the_last_lines_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("b1.log");
        assert_eq!(tail_lines(&log, 3).unwrap(), None, "no log yet");
        let text: String = (1..=10).map(|n| format!("line {n}\n")).collect();
        fs::write(&log, text).unwrap();
        assert_eq!(
            tail_lines(&log, 3).unwrap().unwrap(),
            ["line 8", "line 9", "line 10"]
        );
        assert_eq!(tail_lines(&log, 50).unwrap().unwrap().len(), 10);
    }

    #[test]
    fn a_tail_of_a_huge_log_reads_only_its_end_and_survives_binary_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("b1.log");
        let mut bytes = vec![b'x'; 4 * TAIL_BYTES as usize];
        bytes.extend_from_slice(b"\n\xff\xfe garbage\nlast line\n");
        fs::write(&log, bytes).unwrap();
        let tail = tail_lines(&log, 2).unwrap().unwrap();
        assert_eq!(tail, ["\u{fffd}\u{fffd} garbage", "last line"]);
    }

    #[test]
    fn what_is_created_is_private_to_batons_user() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("state").join("api");
        create_private_dir(&nested).unwrap();
        assert_eq!(mode(&dir.path().join("state")), DIR_MODE, "the parent too");
        assert_eq!(mode(&nested), DIR_MODE);

        let log = nested.join("s1.log");
        drop(open_log(&log).unwrap());
        assert_eq!(mode(&log), FILE_MODE);

        // A file left with a looser mode is replaced, not reused.
        let record = nested.join("s1.json");
        fs::write(&record, "old").unwrap();
        fs::set_permissions(&record, fs::Permissions::from_mode(0o644)).unwrap();
        drop(create_private_file(&record).unwrap());
        assert_eq!(mode(&record), FILE_MODE);
        assert_eq!(fs::read_to_string(&record).unwrap(), "");
    }
}
