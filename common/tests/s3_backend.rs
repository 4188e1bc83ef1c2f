//! The S3 backend against a real S3 server (Garage): ordering, multipart, failures.

use std::time::Duration;

use bytes::Bytes;
use rustic_core::{FileType, Id, ReadBackend, WriteBackend};
use stowage_common::backend::S3Backend;
use stowage_common::env::{CommonEnv, ResticEnv};
use stowage_common::location::Location;
use stowage_common::s3::S3Settings;
use stowage_testkit::garage;
use stowage_testkit::proxy::{Fault, FaultProxy};

fn backend(endpoint: &str, bucket: &str, common: CommonEnv) -> S3Backend {
    let g = garage::shared();
    let restic = ResticEnv {
        aws_access_key_id: Some(g.access_key.clone()),
        aws_secret_access_key: Some(g.secret_key.clone()),
        aws_default_region: Some(garage::REGION.into()),
        ..Default::default()
    };
    let Location::S3(loc) = Location::parse(&format!("s3:{endpoint}/{bucket}/repo"), None).unwrap()
    else {
        panic!()
    };
    let common = CommonEnv {
        allow_http: true,
        ..common
    };
    let mut settings = S3Settings::from_env(loc, &restic, &common).unwrap();
    settings.initial_backoff = Duration::from_millis(20);
    S3Backend::new(settings).unwrap()
}

/// A backend on a fresh bucket, reached through a fault proxy.
fn proxied(hint: &str, common: CommonEnv) -> (FaultProxy, String, S3Backend) {
    let g = garage::shared();
    let proxy = FaultProxy::start(g.addr());
    let bucket = g.bucket(hint);
    let be = backend(&proxy.endpoint, &bucket, common);
    (proxy, bucket, be)
}

/// A pack's id is the SHA-256 of its content (and the S3 backend signs its upload
/// with it, so the server refuses a pack whose content does not match its name).
fn pack_id(data: &[u8]) -> Id {
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    hex.parse::<Id>().unwrap()
}

#[test]
fn index_is_written_only_after_every_pack_is_stored() {
    let g = garage::shared();
    let proxy = FaultProxy::start(g.addr());
    // Every request is slow, so pack uploads are still running when the index comes.
    proxy.set(1, Some(Fault::Delay(Duration::from_millis(300))));
    let bucket = g.bucket("ordering");
    let be = backend(
        &proxy.endpoint,
        &bucket,
        CommonEnv {
            s3_concurrency: 4,
            ..Default::default()
        },
    );
    let mut packs = Vec::new();
    for i in 0..6u8 {
        let data = vec![i; 1000];
        let id = pack_id(&data);
        be.write_bytes(FileType::Pack, &id, false, Bytes::from(data).into())
            .unwrap();
        packs.push(id);
    }
    let index = Id::random();
    be.write_bytes(
        FileType::Index,
        &index,
        true,
        Bytes::from_static(b"index").into(),
    )
    .unwrap();
    // Check directly on the server, not through the proxy.
    let direct = backend(&g.endpoint, &bucket, CommonEnv::default());
    let stored: Vec<Id> = direct.list(FileType::Pack).unwrap();
    for id in &packs {
        assert!(
            stored.contains(id),
            "pack {id:?} missing when the index was written"
        );
    }
    assert_eq!(direct.list(FileType::Index).unwrap(), vec![index]);
    assert_eq!(
        direct.read_full(FileType::Pack, &packs[3]).unwrap(),
        Bytes::from(vec![3u8; 1000])
    );
}

#[test]
fn failed_pack_upload_fails_the_index_write_and_no_index_is_stored() {
    let g = garage::shared();
    let (proxy, bucket, be) = proxied(
        "packfail",
        CommonEnv {
            s3_max_attempts: 1,
            ..Default::default()
        },
    );
    be.create().unwrap();
    proxy.set(1, Some(Fault::InternalError));
    let before = proxy.requests();
    be.write_bytes(
        FileType::Pack,
        &pack_id(b"pack"),
        false,
        Bytes::from_static(b"pack").into(),
    )
    .unwrap();
    let err = be
        .write_bytes(
            FileType::Index,
            &Id::random(),
            true,
            Bytes::from_static(b"i").into(),
        )
        .unwrap_err();
    assert!(
        err.display_log().contains("pack upload failed"),
        "{}",
        err.display_log()
    );
    assert_eq!(
        proxy.requests(),
        before + 1,
        "the index upload was never attempted"
    );
    proxy.set(0, None);
    let direct = backend(&g.endpoint, &bucket, CommonEnv::default());
    assert!(direct.list(FileType::Index).unwrap().is_empty());
}

#[test]
fn large_objects_use_multipart_and_read_back_whole_and_in_ranges() {
    let g = garage::shared();
    let bucket = g.bucket("multipart");
    let be = backend(
        &g.endpoint,
        &bucket,
        CommonEnv {
            s3_multipart_threshold_mib: 5,
            s3_part_size_mib: 5,
            ..Default::default()
        },
    );
    let data: Vec<u8> = stowage_testkit::trees::random_bytes(13 * 1024 * 1024 + 7, 1);
    let id = Id::random();
    be.write_bytes(FileType::Pack, &id, false, Bytes::from(data.clone()).into())
        .unwrap();
    be.flush().unwrap();
    assert_eq!(
        be.stats()
            .multipart_uploads
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        be.read_full(FileType::Pack, &id).unwrap(),
        Bytes::from(data.clone())
    );
    let part = be
        .read_partial(FileType::Pack, &id, false, 6 * 1024 * 1024 - 3, 100)
        .unwrap();
    assert_eq!(&part[..], &data[6 * 1024 * 1024 - 3..6 * 1024 * 1024 + 97]);
    assert_eq!(
        be.list_with_size(FileType::Pack).unwrap(),
        vec![(id, data.len() as u32)]
    );
    // Small objects do not.
    let small = vec![1u8; 1024];
    be.write_bytes(
        FileType::Pack,
        &pack_id(&small),
        false,
        Bytes::from(small).into(),
    )
    .unwrap();
    be.flush().unwrap();
    assert_eq!(
        be.stats()
            .multipart_uploads
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn config_listing_distinguishes_absent_from_unreachable() {
    let g = garage::shared();
    let bucket = g.bucket("config");
    let be = backend(&g.endpoint, &bucket, CommonEnv::default());
    assert!(
        be.list(FileType::Config).unwrap().is_empty(),
        "absent: a clear empty answer"
    );
    be.write_bytes(
        FileType::Config,
        &Id::default(),
        false,
        Bytes::from_static(b"cfg").into(),
    )
    .unwrap();
    assert_eq!(be.list(FileType::Config).unwrap().len(), 1);
    let gone = backend(
        &format!("http://127.0.0.1:{}", stowage_testkit::free_port()),
        &bucket,
        CommonEnv {
            s3_max_attempts: 1,
            ..Default::default()
        },
    );
    let err = gone.list(FileType::Config).unwrap_err();
    assert!(
        err.display_log().contains("cannot reach"),
        "{}",
        err.display_log()
    );
    let missing = backend(&g.endpoint, "no-such-bucket", CommonEnv::default());
    let err = missing.list(FileType::Config).unwrap_err();
    assert!(
        err.display_log().contains("does not exist"),
        "{}",
        err.display_log()
    );
}

#[test]
fn dropped_connections_during_reads_are_retried() {
    let (proxy, _bucket, be) = proxied(
        "truncate",
        CommonEnv {
            s3_max_attempts: 4,
            ..Default::default()
        },
    );
    let id = Id::random();
    let data = Bytes::from(stowage_testkit::trees::random_bytes(300_000, 3));
    be.write_bytes(FileType::Index, &id, true, data.clone().into())
        .unwrap();
    proxy.set(2, Some(Fault::Truncate(1000)));
    for _ in 0..6 {
        assert_eq!(be.read_full(FileType::Index, &id).unwrap(), data);
        assert_eq!(
            &be.read_partial(FileType::Index, &id, false, 100, 200_000)
                .unwrap()[..],
            &data[100..200_100]
        );
    }
    assert!(proxy.faults() >= 5);
}

/// Over plain http a pack is signed with its name (the SHA-256 of its content), so
/// the server checks every byte it receives: a pack whose content does not match its
/// name is refused and nothing is stored. Sent as rustic_core's list of buffers, the
/// pack arrives whole.
#[test]
fn packs_are_signed_with_their_id_and_sent_from_their_parts() {
    let g = garage::shared();
    let bucket = g.bucket("packsig");
    let be = backend(
        &g.endpoint,
        &bucket,
        CommonEnv {
            s3_max_attempts: 1,
            ..Default::default()
        },
    );
    let parts = [
        Bytes::from(vec![3u8; 4096]),
        Bytes::from_static(b"middle"),
        Bytes::from(vec![9u8; 70_000]),
    ];
    let whole: Vec<u8> = parts.iter().flat_map(|p| p.to_vec()).collect();
    let id = pack_id(&whole);
    let mut list = rustic_core::BytesList::default();
    for p in &parts {
        list.add(p.clone());
    }
    be.write_bytes(FileType::Pack, &id, false, list).unwrap();
    be.flush().unwrap();
    assert_eq!(
        be.read_full(FileType::Pack, &id).unwrap(),
        Bytes::from(whole)
    );

    let wrong = Id::random();
    be.write_bytes(
        FileType::Pack,
        &wrong,
        false,
        Bytes::from_static(b"x").into(),
    )
    .unwrap();
    let err = be.flush().unwrap_err().display_log();
    assert!(
        err.contains("InvalidDigest") || err.contains("SHA256"),
        "{err}"
    );
    assert_eq!(be.list(FileType::Pack).unwrap(), vec![id]);
}

#[test]
fn tree_packs_are_read_whole_once_and_data_packs_by_range() {
    use std::sync::atomic::Ordering::Relaxed;
    let g = garage::shared();
    let bucket = g.bucket("treepacks");
    let be = backend(&g.endpoint, &bucket, CommonEnv::default());
    let tree_pack: Vec<u8> = stowage_testkit::trees::random_bytes(300_000, 7);
    let data_pack: Vec<u8> = stowage_testkit::trees::random_bytes(300_000, 8);
    let (tree_id, data_id) = (pack_id(&tree_pack), pack_id(&data_pack));
    for (id, bytes) in [(tree_id, &tree_pack), (data_id, &data_pack)] {
        be.write_bytes(
            FileType::Pack,
            &id,
            false,
            Bytes::from(bytes.clone()).into(),
        )
        .unwrap();
    }
    be.flush().unwrap();
    let requests = || be.stats().requests.load(Relaxed);

    // Trees ("cacheable"): the first read fetches the whole pack, later ones none.
    let before = requests();
    for (offset, len) in [(0u32, 100u32), (1000, 5000), (299_000, 1000), (5, 1)] {
        let got = be
            .read_partial(FileType::Pack, &tree_id, true, offset, len)
            .unwrap();
        assert_eq!(
            &got[..],
            &tree_pack[offset as usize..(offset + len) as usize]
        );
    }
    assert_eq!(requests() - before, 1, "one GET for four tree reads");

    // A range past the pack's end is an error naming the damage, not a panic.
    let err = be
        .read_partial(FileType::Pack, &tree_id, true, 299_990, 100)
        .unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");

    // Data packs: one ranged GET per read, nothing kept.
    let before = requests();
    for (offset, len) in [(0u32, 100u32), (1000, 5000)] {
        let got = be
            .read_partial(FileType::Pack, &data_id, false, offset, len)
            .unwrap();
        assert_eq!(
            &got[..],
            &data_pack[offset as usize..(offset + len) as usize]
        );
    }
    assert_eq!(requests() - before, 2);
}
