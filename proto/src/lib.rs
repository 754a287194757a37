//! gRPC definitions shared by the chunkserver and the stripe client.

pub mod chunkserver {
    pub mod v1 {
        tonic::include_proto!("tessera.chunkserver.v1");
    }
}

pub use chunkserver::v1 as cs;

pub mod read_frames;
