//! Ingest: fetch a Fileset's source and put it as a new version.
//!
//! An `http` source is a tar archive (gzip-compressed or not) fetched over
//! http or https, hashed while it streams to a scratch file, checked against
//! `spec.source.http.sha256` when given, unpacked with every member's path
//! validated (no absolute paths, no `..`, only files, directories and
//! symlinks), and put through the master like `tessera put`. A failure
//! anywhere publishes nothing.

use std::io::Read;
use std::path::{Path, PathBuf};

use http_body_util::BodyExt;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use tessera_client::fileset::{FilesetClient, PutOptions};
use tessera_core::manifest::validate_path;
use tessera_proto::ms;
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("GET {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("the archive's SHA-256 is {actual}, spec.source.http.sha256 says {expected}")]
    Digest { expected: String, actual: String },
    #[error("the archive is not a valid tar: {0}")]
    Archive(String),
    #[error("the archive holds {path:?}: {reason}")]
    Unsafe { path: String, reason: String },
    #[error("storing the version: {0}")]
    Put(String),
    #[error("scratch space: {0}")]
    Io(#[from] std::io::Error),
}

/// Downloads `url` into `file`; returns the bytes and their SHA-256 (hex).
pub async fn download(url: &str, file: &Path) -> Result<(u64, String), IngestError> {
    let fetch = |reason: String| IngestError::Fetch { url: url.to_string(), reason };
    let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| fetch(e.to_string()))?;
    type Empty = http_body_util::Empty<bytes::Bytes>;
    // CA certificates only for https: a plain http source needs none (an
    // image without them still ingests from inside the cluster).
    let resp = if uri.scheme_str() == Some("https") {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| fetch(format!("loading the system's CA certificates: {e}")))?
            .https_only()
            .enable_http1()
            .build();
        HttpClient::builder(TokioExecutor::new()).build::<_, Empty>(https).get(uri).await
    } else {
        HttpClient::builder(TokioExecutor::new()).build_http::<Empty>().get(uri).await
    };
    let resp = resp.map_err(|e| fetch(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(IngestError::Status { url: url.to_string(), status: resp.status().as_u16() });
    }
    let mut body = resp.into_body();
    let mut out = tokio::fs::File::create(file).await?;
    let mut hash = Sha256::new();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| fetch(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            hash.update(&data);
            out.write_all(&data).await?;
            n += data.len() as u64;
        }
    }
    out.flush().await?;
    out.sync_all().await?;
    Ok((n, hex::encode(hash.finalize())))
}

/// Unpacks a tar (or tar.gz) archive into `into`, refusing unsafe members.
pub fn unpack(archive: &Path, into: &Path) -> Result<u64, IngestError> {
    let mut magic = [0u8; 2];
    let gz = std::fs::File::open(archive)?.read(&mut magic)? == 2 && magic == [0x1f, 0x8b];
    let file = std::fs::File::open(archive)?;
    let reader: Box<dyn Read> = if gz { Box::new(flate2::read::GzDecoder::new(file)) } else { Box::new(file) };
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(true);
    tar.set_preserve_mtime(true);
    std::fs::create_dir_all(into)?;
    let mut files = 0;
    for entry in tar.entries().map_err(|e| IngestError::Archive(e.to_string()))? {
        let mut entry = entry.map_err(|e| IngestError::Archive(e.to_string()))?;
        let raw = entry.path().map_err(|e| IngestError::Archive(e.to_string()))?.to_string_lossy().into_owned();
        let path = raw.trim_start_matches("./").trim_end_matches('/').to_string();
        if path.is_empty() {
            continue;
        }
        validate_path(&path).map_err(|e| IngestError::Unsafe { path: raw.clone(), reason: e.to_string() })?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            return Err(IngestError::Unsafe {
                path: raw,
                reason: "only files, directories and symlinks can be stored".into(),
            });
        }
        if kind.is_file() {
            files += 1;
        }
        // unpack_in refuses anything that would land outside `into` too.
        if !entry.unpack_in(into).map_err(|e| IngestError::Archive(e.to_string()))? {
            return Err(IngestError::Unsafe { path: raw, reason: "it would be written outside the fileset".into() });
        }
    }
    Ok(files)
}

/// Fetches `url`, checks it, unpacks it under `scratch` and puts it as a new
/// version of `fileset`. The scratch files are removed either way.
pub async fn ingest_http(
    fc: &FilesetClient,
    fileset: &str,
    url: &str,
    sha256: Option<&str>,
    scratch: &Path,
) -> Result<ms::Version, IngestError> {
    let work = tempfile::Builder::new().prefix("ingest-").tempdir_in(scratch)?;
    let archive = work.path().join("source.tar");
    let (_, digest) = download(url, &archive).await?;
    if let Some(expected) = sha256
        && expected != digest
    {
        return Err(IngestError::Digest { expected: expected.to_string(), actual: digest });
    }
    let tree: PathBuf = work.path().join("tree");
    let (a, t) = (archive.clone(), tree.clone());
    tokio::task::spawn_blocking(move || unpack(&a, &t)).await.map_err(|e| IngestError::Archive(e.to_string()))??;
    tokio::fs::remove_file(&archive).await?;
    fc.put(fileset, &tree, &PutOptions::default(), &|_| {}).await.map_err(|e| IngestError::Put(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, &[u8])], gz: bool) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let w: Box<dyn std::io::Write> = if gz {
            Box::new(flate2::write::GzEncoder::new(f.reopen().unwrap(), flate2::Compression::fast()))
        } else {
            Box::new(f.reopen().unwrap())
        };
        let mut b = tar::Builder::new(w);
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // Write the name bytes directly so unsafe names reach the reader.
            let name = h.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap().flush().unwrap();
        f
    }

    #[test]
    fn archives_unpack_plain_or_gzipped() {
        for gz in [false, true] {
            let a = archive(&[("a.txt", b"hello"), ("d/b.bin", b"\x00\x01")], gz);
            let dir = tempfile::tempdir().unwrap();
            assert_eq!(unpack(a.path(), dir.path()).unwrap(), 2);
            assert_eq!(std::fs::read(dir.path().join("d/b.bin")).unwrap(), b"\x00\x01");
        }
    }

    #[test]
    fn members_that_escape_are_refused_by_name() {
        for bad in ["../evil", "a/../../evil", "/etc/passwd"] {
            let a = archive(&[("ok", b"1"), (bad, b"x")], false);
            let dir = tempfile::tempdir().unwrap();
            let err = unpack(a.path(), dir.path().join("t").as_path()).unwrap_err();
            assert!(matches!(err, IngestError::Unsafe { .. }), "{bad}: {err}");
            assert!(err.to_string().contains(bad.trim_start_matches('/')), "{err}");
            assert!(!dir.path().join("evil").exists());
        }
    }
}
