//! Reading `sql` rows by column name, tolerant of the two backends' typing (SQLite returns
//! booleans as integers and timestamps as text).

use crate::sql::{Rows, Value};

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
