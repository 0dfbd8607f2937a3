//! Files the config names (certificates, keys, salts, tokens, schemas, the
//! config itself), opened so that a special file can never hang a load.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Opens `path` for reading and refuses anything but a regular file.
/// Opened non-blocking: a blocking open of a FIFO waits for a writer, and
/// `check`, `run` and a reload would wait with it. Checked on the open
/// handle, so a swap between the check and the read is moot.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is not a regular file",
        ));
    }
    Ok(file)
}

/// A regular file's bytes, at most `max` of them (a larger file is an error).
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let mut out = Vec::new();
    file.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("is larger than {max} bytes"),
        ));
    }
    Ok(out)
}

/// A regular file's text, at most `max` bytes.
pub fn read_regular_text(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_regular(path, max)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "is not UTF-8 text"))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn special_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        for special in [fifo.as_path(), Path::new("/dev/zero"), dir.path()] {
            let e = read_regular(special, 16).expect_err("not a regular file");
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"0123456789").expect("write");
        assert_eq!(read_regular(&plain, 10).expect("read"), b"0123456789");
        assert!(read_regular(&plain, 9).is_err());
    }
}
