use super::*;
use tessera_core::checksum::block_checksums;

fn id(n: u8, index: u16) -> StripeId {
    StripeId::new(ItemId([n; 16]), index)
}

fn header_for(stripe: StripeId, data: &[u8], bs: u32) -> StripeHeader {
    StripeHeader { stripe, length: data.len() as u64, block_size: bs, crcs: block_checksums(data, bs as usize) }
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn write(store: &Arc<StripeStore>, stripe: StripeId, data: &[u8], bs: u32) -> Result<WriteStart, StoreError> {
    match store.begin_write(header_for(stripe, data, bs))? {
        WriteStart::New(mut w) => {
            for chunk in data.chunks(1000) {
                w.append(chunk)?;
            }
            let dir = w.finish()?;
            Ok(WriteStart::AlreadyPresent { dir })
        }
        present => Ok(present),
    }
}

fn tmp_is_empty(dir: &Path) -> bool {
    fs::read_dir(dir.join("tmp")).unwrap().next().is_none()
}

#[test]
fn written_stripes_read_back_by_range() {
    let d = tempfile::tempdir().unwrap();
    let store = StripeStore::open(&[d.path().to_path_buf()]).unwrap();
    let data = bytes(10_000, 1);
    write(&store, id(1, 0), &data, 4096).unwrap();
    let (all, meta) = store.read(&id(1, 0), 0, 0).unwrap();
    assert_eq!(&all[..], &data[..]);
    assert_eq!(meta.crcs.len(), 3);
    let (mid, _) = store.read(&id(1, 0), 4096, 4096).unwrap();
    assert_eq!(&mid[..], &data[4096..8192]);
    let (tail, _) = store.read(&id(1, 0), 8192, 10_000 - 8192).unwrap();
    assert_eq!(&tail[..], &data[8192..]);
}

#[test]
fn misaligned_and_out_of_bounds_ranges_are_rejected() {
    let d = tempfile::tempdir().unwrap();
    let store = StripeStore::open(&[d.path().to_path_buf()]).unwrap();
    write(&store, id(1, 0), &bytes(10_000, 1), 4096).unwrap();
    for (off, len, why) in [
        (100, 4096, RangeProblem::UnalignedStart),
        (0, 5000, RangeProblem::UnalignedEnd),
        (8192, 4096, RangeProblem::EndsPastEnd),
        (12288, 0, RangeProblem::StartsPastEnd),
    ] {
        match store.read(&id(1, 0), off, len) {
            Err(StoreError::BadRange { reason, .. }) => assert_eq!(reason, why),
            other => panic!("{off}+{len}: {other:?}"),
        }
    }
    assert!(matches!(store.read(&id(9, 0), 0, 0), Err(StoreError::NotFound(_))));
}

#[test]
fn a_retried_write_is_a_no_op_and_a_different_one_conflicts() {
    let d = tempfile::tempdir().unwrap();
    let store = StripeStore::open(&[d.path().to_path_buf()]).unwrap();
    let data = bytes(5000, 1);
    write(&store, id(1, 0), &data, 4096).unwrap();
    assert!(matches!(store.begin_write(header_for(id(1, 0), &data, 4096)), Ok(WriteStart::AlreadyPresent { dir: 0 })));
    let other = bytes(5000, 2);
    assert!(matches!(
        store.begin_write(header_for(id(1, 0), &other, 4096)),
        Err(StoreError::Conflict { what: "contents", .. })
    ));
    assert!(matches!(
        store.begin_write(header_for(id(1, 0), &data[..4000], 4096)),
        Err(StoreError::Conflict { what: "length or block size", .. })
    ));
}

#[test]
fn concurrent_writes_of_one_stripe_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let store = StripeStore::open(&[d.path().to_path_buf()]).unwrap();
    let data = bytes(5000, 1);
    let first = store.begin_write(header_for(id(1, 0), &data, 4096)).unwrap();
    assert!(matches!(store.begin_write(header_for(id(1, 0), &data, 4096)), Err(StoreError::WriteInProgress(_))));
    drop(first);
    assert!(matches!(store.begin_write(header_for(id(1, 0), &data, 4096)), Ok(WriteStart::New(_))));
}

#[test]
fn bad_data_or_size_stores_nothing() {
    let d = tempfile::tempdir().unwrap();
    let store = StripeStore::open(&[d.path().to_path_buf()]).unwrap();
    let data = bytes(10_000, 1);

    // Data that does not match the header's checksums.
    let WriteStart::New(mut w) = store.begin_write(header_for(id(1, 0), &data, 4096)).unwrap() else { panic!() };
    let mut bad = data.clone();
    bad[5000] ^= 0xff;
    w.append(&bad[..4096]).unwrap();
    assert!(matches!(w.append(&bad[4096..]), Err(StoreError::WriteChecksum { block: 1, .. })));
    drop(w);

    // Too few bytes.
    let WriteStart::New(mut w) = store.begin_write(header_for(id(1, 1), &data, 4096)).unwrap() else { panic!() };
    w.append(&data[..9999]).unwrap();
    assert!(matches!(w.finish(), Err(StoreError::SizeMismatch { expected: 10_000, got: 9999, .. })));

    // Too many bytes.
    let WriteStart::New(mut w) = store.begin_write(header_for(id(1, 2), &data, 4096)).unwrap() else { panic!() };
    assert!(matches!(w.append(&bytes(10_001, 1)), Err(StoreError::SizeMismatch { got: 10_001, .. })));
    drop(w);

    assert!(store.inventory().is_empty());
    assert!(tmp_is_empty(d.path()), "no temporary file is left behind");
    // And nothing reappears after a restart.
    drop(store);
    assert!(StripeStore::open(&[d.path().to_path_buf()]).unwrap().inventory().is_empty());
}

#[test]
fn invalid_headers_name_the_field() {
    let d = tempfile::tempdir().unwrap();
    let store = StripeStore::open(&[d.path().to_path_buf()]).unwrap();
    let mut h = header_for(id(1, 0), &bytes(100, 0), 64);
    h.block_size = 100;
    let err = store.begin_write(h.clone()).unwrap_err().to_string();
    assert!(err.contains("block_size 100"), "{err}");
    h.block_size = 64;
    h.crcs.pop();
    let err = store.begin_write(h).unwrap_err().to_string();
    assert!(err.contains("1 block checksums for 2 blocks"), "{err}");
}

#[test]
fn a_restart_serves_what_was_stored_and_drops_interrupted_writes() {
    let d = tempfile::tempdir().unwrap();
    let dirs = [d.path().join("a"), d.path().join("b")];
    let data = bytes(70_000, 3);
    {
        let store = StripeStore::open(&dirs).unwrap();
        for i in 0..6 {
            write(&store, id(i, i as u16), &data, 65536).unwrap();
        }
        // A write cut off by a crash: the process dies with the temp file there.
        let WriteStart::New(mut w) = store.begin_write(header_for(id(7, 0), &data, 65536)).unwrap() else { panic!() };
        w.append(&data[..1000]).unwrap();
        std::mem::forget(w);
    }
    let store = StripeStore::open(&dirs).unwrap();
    assert_eq!(store.inventory().len(), 6);
    for i in 0..6 {
        assert_eq!(&store.read(&id(i, i as u16), 0, 0).unwrap().0[..], &data[..]);
    }
    assert!(store.get(&id(7, 0)).is_none());
    assert!(dirs.iter().all(|p| tmp_is_empty(p)));
}

#[test]
fn a_flipped_byte_on_disk_is_reported_with_its_block() {
    let d = tempfile::tempdir().unwrap();
    let store = StripeStore::open(&[d.path().to_path_buf()]).unwrap();
    let data = bytes(3 * 4096, 1);
    write(&store, id(1, 4), &data, 4096).unwrap();
    let path = store.dirs()[0].stripe_path(&id(1, 4));
    let f = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut b = [0u8; 1];
    let at = 4096 + 4096 + 10; // data offset + block 1
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 1], at).unwrap();
    match store.read(&id(1, 4), 0, 0) {
        Err(StoreError::Corrupt { stripe, mismatch, .. }) => {
            assert_eq!(stripe, id(1, 4));
            assert_eq!(mismatch.block, 1);
        }
        other => panic!("{other:?}"),
    }
    // Blocks outside the damage still read.
    assert_eq!(&store.read(&id(1, 4), 8192, 0).unwrap().0[..], &data[8192..]);
    // A verify (the scrubber's read, from the device) finds the same block.
    match store.verify(&id(1, 4), 0, 0) {
        Err(StoreError::Corrupt { mismatch, .. }) => assert_eq!(mismatch.block, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.verify(&id(1, 4), 8192, 0).unwrap(), 4096);
    // An intact stripe whose end is not on a page (the direct read's tail).
    let odd = bytes(10_000, 3);
    write(&store, id(2, 0), &odd, 4096).unwrap();
    assert_eq!(store.verify(&id(2, 0), 0, 0).unwrap(), 10_000, "the intact stripe verifies whole");
    assert_eq!(store.verify(&id(2, 0), 4096, 0).unwrap(), 10_000 - 4096);
    let _ = store.take_changes();
    assert!(store.quarantine(&id(1, 4)).unwrap());
    assert!(!store.quarantine(&id(1, 4)).unwrap(), "only the first quarantine takes it out");
    assert!(matches!(store.read(&id(1, 4), 0, 0), Err(StoreError::NotFound(_))));
    assert!(matches!(store.verify(&id(1, 4), 0, 0), Err(StoreError::NotFound(_))));
    assert_eq!(store.take_changes(), (vec![(id(1, 4), Change::Quarantined)], false));
    // Kept for inspection, under a name of its own so a second quarantine of
    // the same stripe (after it was rebuilt here) keeps the first.
    let kept: Vec<String> = fs::read_dir(d.path().join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(kept.len(), 1);
    assert!(kept[0].starts_with(&format!("{}.", id(1, 4))), "{kept:?}");
}

#[test]
fn a_damaged_header_is_quarantined_at_start_up() {
    let d = tempfile::tempdir().unwrap();
    let path = {
        let store = StripeStore::open(&[d.path().to_path_buf()]).unwrap();
        write(&store, id(1, 0), &bytes(100, 1), 64).unwrap();
        write(&store, id(2, 0), &bytes(100, 1), 64).unwrap();
        store.dirs()[0].stripe_path(&id(1, 0))
    };
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0xff], 70).unwrap(); // inside the checksum table
    let store = StripeStore::open(&[d.path().to_path_buf()]).unwrap();
    assert_eq!(store.inventory().iter().map(|x| x.0).collect::<Vec<_>>(), vec![id(2, 0)]);
    assert!(d.path().join("quarantine").join(id(1, 0).to_string()).exists());
}

#[test]
fn delete_removes_the_file() {
    let d = tempfile::tempdir().unwrap();
    let store = StripeStore::open(&[d.path().to_path_buf()]).unwrap();
    write(&store, id(1, 0), &bytes(100, 1), 64).unwrap();
    assert!(store.delete(&id(1, 0)).unwrap());
    assert!(!store.delete(&id(1, 0)).unwrap());
    assert!(!store.dirs()[0].stripe_path(&id(1, 0)).exists());
}
