use super::*;
use crate::storage::ErrorKind;

fn open_temp() -> (tempfile::TempDir, LocalStorage) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStorage::open(dir.path()).unwrap();
    (dir, store)
}

async fn make(_case: &'static str) -> Option<crate::storage::conformance::Fixture> {
    let (dir, store) = open_temp();
    Some(crate::storage::conformance::Fixture::new(
        std::sync::Arc::new(store),
        dir,
    ))
}

crate::storage_conformance!(make);

#[tokio::test]
async fn survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let doc = crate::storage::conformance::sample_doc("PR-REOPEN", "pending", "u1");
    {
        let store = LocalStorage::open(dir.path()).unwrap();
        assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Inserted);
        store.close().await;
    }
    let store = LocalStorage::open(dir.path()).unwrap();
    assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Duplicate);
    assert_eq!(
        store.get(&doc.id).await.unwrap().unwrap(),
        Value::Object(doc.body.clone())
    );
}

#[test]
fn only_errors_about_the_document_are_rejected() {
    use rusqlite::ffi;
    let err = |code: i32| {
        sql_err(rusqlite::Error::SqliteFailure(
            ffi::Error::new(code),
            Some("x".into()),
        ))
    };
    for code in [
        ffi::SQLITE_READONLY,
        ffi::SQLITE_CORRUPT,
        ffi::SQLITE_NOMEM,
        ffi::SQLITE_PERM,
        ffi::SQLITE_IOERR,
        ffi::SQLITE_FULL,
        ffi::SQLITE_CANTOPEN,
        ffi::SQLITE_BUSY,
        ffi::SQLITE_LOCKED,
        ffi::SQLITE_NOTADB,
        ffi::SQLITE_PROTOCOL,
        ffi::SQLITE_READONLY_DBMOVED,
        ffi::SQLITE_IOERR_FSYNC,
    ] {
        let e = err(code);
        assert!(e.kind() == ErrorKind::Unavailable, "{code}: {e:?}");
    }
    assert!(err(ffi::SQLITE_TOOBIG).kind() == ErrorKind::RejectedDocument);
}

#[tokio::test]
async fn a_read_only_database_is_retriable_and_not_ready() {
    let (dir, store) = open_temp();
    let doc = crate::storage::conformance::sample_doc("PR-RO", "pending", "u");
    assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Inserted);
    store.ping().await.unwrap();
    store.close().await;

    let ro = LocalStorage::open_with_read_only_writer(dir.path()).unwrap();
    let other = crate::storage::conformance::sample_doc("PR-RO-2", "pending", "u");
    let err = ro.save(&other).await.unwrap_err();
    assert!(err.kind() == ErrorKind::Unavailable, "{err:?}");
    assert!(err.to_string().contains("readonly"), "{err}");
    // The readiness probe writes: it sees the fault a read would not.
    let err = ro.ping().await.unwrap_err();
    assert!(err.is_retriable(), "{err}");
    assert!(err.to_string().contains("readonly"), "{err}");
    // Reads still work.
    assert!(ro.get(&doc.id).await.unwrap().is_some());
    ro.close().await;
}

#[tokio::test]
async fn a_save_held_up_by_a_locked_database_times_out_retriably() {
    let (dir, store) = open_temp();
    let store = store.with_save_timeout(std::time::Duration::from_millis(300));
    // Another process holds the write lock (SQLite's busy timeout is 5 s).
    let other = Connection::open(dir.path().join(FILE_NAME)).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let doc = crate::storage::conformance::sample_doc("PR-LOCK", "pending", "u");
    let err = store.save(&doc).await.unwrap_err();
    assert!(err.kind() == ErrorKind::Timeout, "{err:?}");
    assert!(err.is_retriable());
    other.execute_batch("ROLLBACK").unwrap();
    drop(other);
    // The redelivery succeeds (the timed-out save may have been committed meanwhile).
    let again = store.save(&doc).await.unwrap();
    assert!(matches!(
        again,
        SaveOutcome::Inserted | SaveOutcome::Duplicate
    ));
    store.close().await;
}

#[tokio::test]
async fn save_after_close_is_retriable() {
    let (_dir, store) = open_temp();
    store.close().await;
    let doc = crate::storage::conformance::sample_doc("PR-C", "pending", "u");
    let err = store.save(&doc).await.unwrap_err();
    assert!(err.is_retriable(), "{err}");
    assert!(store.ping().await.is_err());
}
