//! gRPC definitions: the chunkserver API (`cs`) and the master API (`ms`).

pub mod chunkserver {
    pub mod v1 {
        tonic::include_proto!("tessera.chunkserver.v1");
    }
}

pub mod master {
    pub mod v1 {
        tonic::include_proto!("tessera.master.v1");
    }
}

pub use chunkserver::v1 as cs;
pub use master::v1 as ms;

pub mod read_frames;

/// gRPC metadata key of the id a reader gives each read, carried to every
/// chunkserver it asks: one `grep` of the id follows the read across the
/// client's and the chunkservers' logs.
pub const REQUEST_ID_HEADER: &str = "x-tessera-request-id";

/// A request id as received, if it is a sane one (1 to 32 characters of
/// `[0-9a-zA-Z-]`; anything else is dropped, never logged).
pub fn request_id(id: Option<&str>) -> Option<String> {
    let id = id?;
    (!id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .then(|| id.to_string())
}
