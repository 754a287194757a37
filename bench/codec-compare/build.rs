// Links ISA-L when the system has it (Debian: libisal-dev) and tells the code
// through the `has_isal` cfg; without it the ISA-L rows are skipped.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_isal)");
    println!("cargo:rerun-if-env-changed=TESSERA_NO_ISAL");
    let found = ["/usr/lib/x86_64-linux-gnu/libisal.so", "/usr/lib/libisal.so", "/usr/local/lib/libisal.so"]
        .iter()
        .find(|p| std::path::Path::new(p).exists());
    if let (Some(p), Err(_)) = (found, std::env::var("TESSERA_NO_ISAL")) {
        let dir = std::path::Path::new(p).parent().expect("a library path has a parent");
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-lib=dylib=isal");
        println!("cargo:rustc-cfg=has_isal");
    } else {
        println!("cargo:warning=libisal not found: the ISA-L comparison is skipped (apt-get install libisal-dev)");
    }
}
