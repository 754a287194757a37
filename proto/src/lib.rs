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
