// Every function shape `#[db_retry]` supports, depending on luca-core alone.
use luca_core::db_retry;
use luca_core::rusqlite::{self, Connection};

#[db_retry]
fn free(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT 1", [], |r| r.get(0))
}

#[db_retry(max_retries = 2)]
fn generic<T: rusqlite::types::FromSql>(conn: &Connection, sql: impl AsRef<str>) -> rusqlite::Result<T> {
    conn.query_row(sql.as_ref(), [], |r| r.get(0))
}

#[db_retry]
fn early_return(flag: bool) -> luca_core::Result<u8> {
    if flag {
        return Ok(1);
    }
    let n: i64 = Connection::open_in_memory()?.query_row("SELECT 2", [], |r| r.get(0))?;
    Ok(n as u8)
}

#[db_retry]
fn with_lifetimes<'a>(conn: &'a Connection, name: &str) -> rusqlite::Result<rusqlite::Statement<'a>> {
    conn.prepare(&format!("SELECT '{name}'"))
}

#[db_retry]
fn inner_attribute() -> luca_core::Result<()> {
    #![allow(unused_variables)]
    let unused = 1;
    Ok(())
}

#[db_retry]
fn where_clause<S>(s: S) -> luca_core::Result<String>
where
    S: std::fmt::Display,
{
    Ok(s.to_string())
}

#[db_retry]
fn clones_by_value_argument(rows: Vec<String>) -> luca_core::Result<usize> {
    let owned = rows.clone();
    Ok(owned.len())
}

#[db_retry]
fn returns_impl_trait(n: u32) -> Result<impl Iterator<Item = u32>, rusqlite::Error> {
    Ok(0..n)
}

#[db_retry]
pub(crate) unsafe fn unsafe_fn() -> luca_core::Result<()> {
    Ok(())
}

struct Repo {
    conn: Connection,
    n: u32,
}

impl Repo {
    #[db_retry]
    fn by_ref(&self) -> rusqlite::Result<i64> {
        self.conn.query_row("SELECT 1", [], |r| r.get(0))
    }

    #[db_retry]
    fn by_mut(&mut self) -> rusqlite::Result<u32> {
        self.n += 1;
        Ok(self.n)
    }

    #[db_retry]
    fn borrowed_field(&self) -> rusqlite::Result<&Connection> {
        Ok(&self.conn)
    }

    #[db_retry]
    fn associated() -> luca_core::Result<Self> {
        Ok(Repo { conn: Connection::open_in_memory()?, n: 0 })
    }

    #[db_retry]
    async fn async_by_mut(&mut self) -> rusqlite::Result<u32> {
        self.n += 1;
        Ok(self.n)
    }
}

trait Store {
    fn conn(&self) -> &Connection;

    #[db_retry]
    fn default_method(&self) -> rusqlite::Result<i64> {
        self.conn().query_row("SELECT 1", [], |r| r.get(0))
    }

    fn required(&mut self) -> luca_core::Result<()>;

    #[db_retry]
    async fn async_default(&self) -> rusqlite::Result<i64> {
        self.conn().query_row("SELECT 1", [], |r| r.get(0))
    }
}

impl Store for Repo {
    fn conn(&self) -> &Connection {
        &self.conn
    }

    #[db_retry(delay_ms = 1)]
    fn required(&mut self) -> luca_core::Result<()> {
        self.n += 1;
        Ok(())
    }
}

#[db_retry]
async fn async_free<F: Fn() -> u32>(f: F, name: &str) -> luca_core::Result<String> {
    Ok(format!("{name}{}", f()))
}

fn assert_send<T: Send>(_: T) {}

fn main() {
    let mut repo = Repo::associated().unwrap();
    assert_eq!(free(&repo.conn).unwrap(), 1);
    assert_eq!(generic::<i64>(&repo.conn, "SELECT 3").unwrap(), 3);
    assert_eq!(early_return(true).unwrap(), 1);
    assert_eq!(early_return(false).unwrap(), 2);
    assert!(with_lifetimes(&repo.conn, "x").is_ok());
    assert_eq!(where_clause(5).unwrap(), "5");
    inner_attribute().unwrap();
    assert_eq!(clones_by_value_argument(vec!["a".into()]).unwrap(), 1);
    assert_eq!(returns_impl_trait(3).unwrap().sum::<u32>(), 3);
    assert!(unsafe { unsafe_fn() }.is_ok());
    assert_eq!(repo.by_ref().unwrap(), 1);
    assert_eq!(repo.by_mut().unwrap(), 1);
    assert!(repo.borrowed_field().is_ok());
    assert_eq!(repo.default_method().unwrap(), 1);
    repo.required().unwrap();
    assert_send(async_free(|| 1, "n"));
    let _ = repo.async_by_mut();
    let _ = repo.async_default();
}
