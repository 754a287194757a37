//! `tessera-csi`: the CSI node and controller plugin.

fn main() {}
