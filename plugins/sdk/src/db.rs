//! Reading `sql` rows by column name, tolerant of the two backends' typing (SQLite returns
//! booleans as integers and timestamps as text).

use crate::sql::{self, Rows, Value};

/// One row of a result, with its column names.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    columns: &'a [String],
    values: &'a [Value],
}

impl<'a> Row<'a> {
    fn value(&self, column: &str) -> Option<&'a Value> {
        let index = self.columns.iter().position(|c| c == column)?;
        self.values.get(index)
    }

    pub fn i64(&self, column: &str) -> Option<i64> {
        match self.value(column)? {
            Value::Integer(v) => Some(*v),
            _ => None,
        }
    }

    pub fn bool(&self, column: &str) -> Option<bool> {
        match self.value(column)? {
            Value::Boolean(v) => Some(*v),
            Value::Integer(v) => Some(*v != 0),
            _ => None,
        }
    }

    /// Text or timestamp columns as a string; `None` for NULL.
    pub fn str(&self, column: &str) -> Option<&'a str> {
        match self.value(column)? {
            Value::Text(v) | Value::Timestamp(v) => Some(v),
            _ => None,
        }
    }
}

/// Iterates the rows of a result.
pub fn rows(result: &Rows) -> impl Iterator<Item = Row<'_>> {
    result.rows.iter().map(|values| Row {
        columns: &result.columns,
        values,
    })
}

/// Where statements run: on their own ([`Autocommit`]), or inside a [`sql::Transaction`].
/// Code that reads and writes through `&impl Statements` works either way.
pub trait Statements {
    fn query(&self, statement: &str, params: &[Value]) -> Result<Rows, sql::Error>;
    fn execute(&self, statement: &str, params: &[Value]) -> Result<u64, sql::Error>;
}

/// Each statement on its own, committed when it succeeds.
#[derive(Debug, Clone, Copy)]
pub struct Autocommit;

impl Statements for Autocommit {
    fn query(&self, statement: &str, params: &[Value]) -> Result<Rows, sql::Error> {
        sql::query(statement, params)
    }

    fn execute(&self, statement: &str, params: &[Value]) -> Result<u64, sql::Error> {
        sql::execute(statement, params)
    }
}

impl Statements for sql::Transaction {
    fn query(&self, statement: &str, params: &[Value]) -> Result<Rows, sql::Error> {
        sql::Transaction::query(self, statement, params)
    }

    fn execute(&self, statement: &str, params: &[Value]) -> Result<u64, sql::Error> {
        sql::Transaction::execute(self, statement, params)
    }
}

/// Runs `work` in a transaction: committed when it returns `Ok`, rolled back when it
/// returns `Err` (or traps: the host rolls back what a request leaves open).
pub fn transaction<T, E: From<sql::Error>>(
    work: impl FnOnce(&sql::Transaction) -> Result<T, E>,
) -> Result<T, E> {
    let transaction = sql::begin()?;
    match work(&transaction) {
        Ok(value) => {
            sql::Transaction::commit(transaction)?;
            Ok(value)
        }
        Err(err) => {
            // Dropping it would roll back too; saying so is clearer, and a failed
            // rollback changes nothing for the caller.
            let _ = sql::Transaction::rollback(transaction);
            Err(err)
        }
    }
}
