//! The master's gRPC services: Registry for chunkservers, Master for clients.

use std::sync::Arc;
use std::time::Instant;

use tessera_proto::ms::{self, master_server, registry_server};
use tonic::{Request, Response, Status, Streaming};

use crate::records::{FilesetRecord, now_unix};

use crate::Master;
use crate::maintenance::Chores;
use crate::wire::{self, stripe_from_wire};

/// Both services over one master.
#[derive(Debug, Clone)]
pub struct MasterService {
    master: Arc<Master>,
    chores: Chores,
}

impl MasterService {
    pub fn new(master: Arc<Master>, chores: Chores) -> Self {
        Self { master, chores }
    }
}

#[tonic::async_trait]
impl registry_server::Registry for MasterService {
    async fn register(&self, request: Request<ms::RegisterRequest>) -> Result<Response<ms::RegisterResponse>, Status> {
        let registration = wire::registration(request.get_ref())?;
        let epoch = self.master.register(&registration, Instant::now());
        Ok(Response::new(ms::RegisterResponse { master_epoch: epoch }))
    }

    async fn report_inventory(
        &self,
        request: Request<Streaming<ms::InventoryReport>>,
    ) -> Result<Response<ms::InventoryAck>, Status> {
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            let stripes: Vec<_> = batch.stripes.iter().filter_map(stripe_from_wire).collect();
            if !self.master.report_inventory(&batch.server_id, &batch.master_epoch, &stripes, Instant::now()) {
                return Err(Status::failed_precondition(
                    "register again: the master does not know this server or epoch",
                ));
            }
        }
        Ok(Response::new(ms::InventoryAck {}))
    }

    async fn heartbeat(
        &self,
        request: Request<ms::HeartbeatRequest>,
    ) -> Result<Response<ms::HeartbeatResponse>, Status> {
        let known = self.master.heartbeat(&wire::heartbeat(request.get_ref())?, Instant::now());
        Ok(Response::new(ms::HeartbeatResponse { reregister: !known }))
    }
}

#[tonic::async_trait]
impl master_server::Master for MasterService {
    async fn create_fileset(
        &self,
        request: Request<ms::CreateFilesetRequest>,
    ) -> Result<Response<ms::Fileset>, Status> {
        let req = request.into_inner();
        let spec = req.spec.ok_or_else(|| Status::invalid_argument("spec is required"))?;
        let record = FilesetRecord::from_spec(&spec, now_unix())?;
        Ok(Response::new(wire::fileset_to_wire(&self.master.create_fileset(record, req.if_absent).await?)))
    }

    async fn get_fileset(&self, request: Request<ms::GetFilesetRequest>) -> Result<Response<ms::Fileset>, Status> {
        Ok(Response::new(wire::fileset_to_wire(&self.master.get_fileset(&request.get_ref().name)?)))
    }

    async fn list_filesets(
        &self,
        _request: Request<ms::ListFilesetsRequest>,
    ) -> Result<Response<ms::ListFilesetsResponse>, Status> {
        let filesets = self.master.list_filesets().iter().map(wire::fileset_to_wire).collect();
        Ok(Response::new(ms::ListFilesetsResponse { filesets }))
    }

    async fn delete_fileset(
        &self,
        request: Request<ms::DeleteFilesetRequest>,
    ) -> Result<Response<ms::DeleteFilesetResponse>, Status> {
        let (count, deletions) = self.master.delete_fileset(&request.get_ref().name).await?;
        self.chores.delete(deletions);
        Ok(Response::new(ms::DeleteFilesetResponse { versions_deleted: count }))
    }

    async fn begin_version(
        &self,
        request: Request<ms::BeginVersionRequest>,
    ) -> Result<Response<ms::BeginVersionResponse>, Status> {
        let (session, layout, min) = self.master.begin_version(&request.get_ref().fileset, Instant::now())?;
        Ok(Response::new(ms::BeginVersionResponse {
            session,
            layout: Some(wire::layout_to_wire(&layout)),
            lease_secs: self.master.config.session_lease.as_secs() as u32,
            min_write_stripes: min as u32,
        }))
    }

    async fn allocate_items(
        &self,
        request: Request<ms::AllocateItemsRequest>,
    ) -> Result<Response<ms::AllocateItemsResponse>, Status> {
        let req = request.into_inner();
        if req.count == 0 || req.count > 1024 {
            return Err(Status::invalid_argument("count must be between 1 and 1024"));
        }
        let items = self.master.allocate_items(
            &req.session,
            req.count as usize,
            req.stripe_length,
            &req.failed_servers,
            Instant::now(),
            &mut rand::rng(),
        )?;
        Ok(Response::new(ms::AllocateItemsResponse { items: items.iter().map(wire::placement_to_wire).collect() }))
    }

    async fn commit_version(
        &self,
        request: Request<ms::CommitVersionRequest>,
    ) -> Result<Response<ms::Version>, Status> {
        let commit = wire::commit(request.get_ref())?;
        let (version, deletions) = self.master.commit_version(commit).await?;
        self.chores.delete(deletions);
        Ok(Response::new(version.to_wire()))
    }

    async fn abort_version(
        &self,
        request: Request<ms::AbortVersionRequest>,
    ) -> Result<Response<ms::AbortVersionResponse>, Status> {
        self.master.abort_version(&request.get_ref().session);
        Ok(Response::new(ms::AbortVersionResponse {}))
    }

    async fn list_versions(
        &self,
        request: Request<ms::ListVersionsRequest>,
    ) -> Result<Response<ms::ListVersionsResponse>, Status> {
        let versions = self.master.list_versions(&request.get_ref().fileset)?;
        Ok(Response::new(ms::ListVersionsResponse { versions: versions.iter().map(|v| v.to_wire()).collect() }))
    }

    async fn get_version(
        &self,
        request: Request<ms::GetVersionRequest>,
    ) -> Result<Response<ms::GetVersionResponse>, Status> {
        let req = request.get_ref();
        // Just after a restart the index fills from chunkserver reports:
        // give them until the heartbeat timeout before answering with holes.
        while self.master.warming_up(Instant::now()) && !self.master.readable(&req.fileset, req.version) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok(Response::new(wire::version_view_to_wire(&self.master.get_version(&req.fileset, req.version)?)))
    }

    async fn delete_version(
        &self,
        request: Request<ms::DeleteVersionRequest>,
    ) -> Result<Response<ms::DeleteVersionResponse>, Status> {
        let req = request.get_ref();
        if req.version == 0 {
            return Err(Status::invalid_argument("version: name the version to delete"));
        }
        self.chores.delete(self.master.delete_version(&req.fileset, req.version).await?);
        Ok(Response::new(ms::DeleteVersionResponse {}))
    }

    async fn pin_version(&self, request: Request<ms::PinRequest>) -> Result<Response<ms::PinResponse>, Status> {
        let r = request.get_ref();
        self.master.pin(&r.fileset, r.version, &r.holder, true).await?;
        Ok(Response::new(ms::PinResponse {}))
    }

    async fn unpin_version(&self, request: Request<ms::PinRequest>) -> Result<Response<ms::PinResponse>, Status> {
        let r = request.get_ref();
        self.master.pin(&r.fileset, r.version, &r.holder, false).await?;
        Ok(Response::new(ms::PinResponse {}))
    }

    async fn status(&self, request: Request<ms::StatusRequest>) -> Result<Response<ms::StatusResponse>, Status> {
        Ok(Response::new(wire::status_to_wire(self.master.status(&request.get_ref().fileset, Instant::now())?)))
    }

    async fn report_corrupt_stripe(
        &self,
        request: Request<ms::ReportCorruptStripeRequest>,
    ) -> Result<Response<ms::ReportCorruptStripeResponse>, Status> {
        let r = request.get_ref();
        let Some(stripe) = r.stripe.as_ref().and_then(stripe_from_wire) else {
            return Err(Status::invalid_argument("stripe is required (16-byte item, index below 65536)"));
        };
        if r.server.is_empty() {
            return Err(Status::invalid_argument("server is required"));
        }
        if let Some(address) = self.master.corrupt_reported(stripe, &r.server) {
            self.chores.verify(stripe, address);
        }
        Ok(Response::new(ms::ReportCorruptStripeResponse {}))
    }
}
