//! Unix sockets in safe places. A private socket (admin APIs) lives in a 0700 directory and is
//! 0600; a public one (the Workload API, which any local process may call: callers are told
//! apart by their kernel credentials) is 0666 in a 0755 directory. Either way a symlink, a
//! group/world-writable directory (such as `/tmp`), a directory of another user, or a live
//! socket of another process is refused.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use tokio::net::UnixListener;
use tonic::transport::{Channel, Endpoint};

/// Why a private socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The path or its directory is unsafe.
    #[error("refusing socket `{path}`: {reason}")]
    Unsafe {
        /// The socket path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Another process is serving on it.
    #[error("socket `{0}` is in use by another process")]
    InUse(String),
    /// Filesystem failure.
    #[error("socket `{path}`: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Connects a gRPC channel to a Unix socket (the admin APIs and the Workload API).
pub async fn channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    // The URI is required by tonic but unused: the connector ignores it.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
}

/// Who may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only this user (admin APIs).
    Private,
    /// Any local user (the Workload API).
    Public,
}

/// Creates (or checks) the directory of `path` and binds a private socket there.
pub fn bind_private(path: &Path) -> Result<UnixListener, SocketError> {
    bind(path, Access::Private)
}

/// Creates (or checks) the directory of `path` and binds a socket with the given access there.
pub fn bind(path: &Path, access: Access) -> Result<UnixListener, SocketError> {
    let (dir_mode, sock_mode) = match access {
        Access::Private => (0o700, 0o600),
        Access::Public => (0o755, 0o666),
    };
    let p = path.display().to_string();
    let unsafe_ = |reason: &str| SocketError::Unsafe {
        path: p.clone(),
        reason: reason.to_owned(),
    };
    let io = |source| SocketError::Io {
        path: p.clone(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| unsafe_("it has no parent directory"))?;
    match fs::symlink_metadata(dir) {
        Ok(m) => {
            if m.file_type().is_symlink() || !m.is_dir() {
                return Err(unsafe_("its directory is a symlink or not a directory"));
            }
            if m.permissions().mode() & 0o022 != 0 {
                return Err(unsafe_("its directory is group- or world-writable"));
            }
            if access == Access::Private && m.permissions().mode() & 0o077 != 0 {
                return Err(unsafe_(&format!(
                    "its directory is mode {:04o}; a private socket's directory must be 0700 \
                     (chmod 0700 `{}`)",
                    m.permissions().mode() & 0o7777,
                    dir.display()
                )));
            }
            if m.uid() != current_uid() {
                return Err(unsafe_("its directory belongs to another user"));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(dir_mode)).map_err(io)?;
        }
        Err(e) => return Err(io(e)),
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => return Err(unsafe_("the path is a symlink")),
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse(p));
            }
            // A stale socket from a process that died.
            fs::remove_file(path).map_err(io)?;
        }
        Ok(_) => return Err(unsafe_("the path exists and is not a socket")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let l = UnixListener::bind(path).map_err(io)?;
    fs::set_permissions(path, fs::Permissions::from_mode(sock_mode)).map_err(io)?;
    Ok(l)
}

/// The uid this process creates files as. (It used to be read off a probe file created in the
/// directory, which followed a symlink planted there: a root agent truncated a root-owned file.)
fn current_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn public_sockets_are_callable_by_anyone_but_still_placed_safely() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("public/api.sock");
        let _l = bind(&path, Access::Public).unwrap();
        let dm = fs::metadata(d.path().join("public"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dm, 0o755);
        let sm = fs::symlink_metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(sm, 0o666);
        let open = d.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(matches!(
            bind(&open.join("api.sock"), Access::Public),
            Err(SocketError::Unsafe { .. })
        ));
    }

    #[tokio::test]
    async fn creates_private_dir_and_socket() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("run/admin.sock");
        let _l = bind_private(&path).unwrap();
        let dm = fs::metadata(d.path().join("run"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dm, 0o700);
        let sm = fs::symlink_metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(sm, 0o600);
        // A second server on the same socket is refused.
        assert!(matches!(bind_private(&path), Err(SocketError::InUse(_))));
    }

    #[tokio::test]
    async fn private_dirs_must_be_0700_and_nothing_is_created_in_them() {
        let d = tempfile::tempdir().unwrap();
        let wide = d.path().join("wide");
        fs::create_dir(&wide).unwrap();
        fs::set_permissions(&wide, fs::Permissions::from_mode(0o755)).unwrap();
        let err = bind_private(&wide.join("admin.sock"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("0700"), "{err}");
        // The old uid probe created `.writ-uid-probe-<pid>` through any symlink planted there.
        let victim = d.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let private = d.path().join("private");
        fs::create_dir(&private).unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(
            &victim,
            private.join(format!(".writ-uid-probe-{}", std::process::id())),
        )
        .unwrap();
        let _l = bind_private(&private.join("admin.sock")).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }

    #[tokio::test]
    async fn refuses_unsafe_places() {
        let d = tempfile::tempdir().unwrap();
        let open = d.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            bind_private(&open.join("a.sock")),
            Err(SocketError::Unsafe { .. })
        ));
        let private = d.path().join("private");
        fs::create_dir(&private).unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("/tmp/elsewhere", private.join("link.sock")).unwrap();
        assert!(matches!(
            bind_private(&private.join("link.sock")),
            Err(SocketError::Unsafe { .. })
        ));
        fs::write(private.join("file.sock"), b"x").unwrap();
        assert!(matches!(
            bind_private(&private.join("file.sock")),
            Err(SocketError::Unsafe { .. })
        ));
    }
}
