//! Row-at-a-time Parquet writing in bounded batches, so that generating 1,000× national volumes
//! never holds a whole table in memory.

use anyhow::{Context, Result};
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use policies::cdm::{ColumnType, TableDef};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

const BATCH_ROWS: usize = 65_536;

pub enum V<'a> {
    S(&'a str),
    D(i32),
    T(i64),
    B(bool),
    I(i64),
    Null,
}

enum Col {
    S(StringBuilder),
    D(Date32Builder),
    T(TimestampMicrosecondBuilder),
    B(BooleanBuilder),
    I(Int64Builder),
}

pub struct TableWriter {
    def: TableDef,
    cols: Vec<Col>,
    pending: usize,
    pub rows: u64,
    writer: ArrowWriter<File>,
}

impl TableWriter {
    pub fn create(dir: &Path, def: TableDef) -> Result<TableWriter> {
        let path = dir.join(format!("{}.parquet", def.name));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let writer = ArrowWriter::try_new(file, def.schema(), Some(props))?;
        let cols = def.columns.iter().map(|c| new_col(c.ty)).collect();
        Ok(TableWriter {
            def,
            cols,
            pending: 0,
            rows: 0,
            writer,
        })
    }

    pub fn row(&mut self, values: &[V]) -> Result<()> {
        anyhow::ensure!(
            values.len() == self.cols.len(),
            "table {}: {} values for {} columns",
            self.def.name,
            values.len(),
            self.cols.len()
        );
        for (c, v) in self.cols.iter_mut().zip(values) {
            match (c, v) {
                (Col::S(b), V::S(s)) => b.append_value(s),
                (Col::S(b), V::Null) => b.append_null(),
                (Col::D(b), V::D(d)) => b.append_value(*d),
                (Col::D(b), V::Null) => b.append_null(),
                (Col::T(b), V::T(t)) => b.append_value(*t),
                (Col::T(b), V::Null) => b.append_null(),
                (Col::B(b), V::B(x)) => b.append_value(*x),
                (Col::I(b), V::I(x)) => b.append_value(*x),
                _ => anyhow::bail!("table {}: value of the wrong type", self.def.name),
            }
        }
        self.pending += 1;
        self.rows += 1;
        if self.pending >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        let arrays: Vec<ArrayRef> = self
            .cols
            .iter_mut()
            .map(|c| -> ArrayRef {
                match c {
                    Col::S(b) => Arc::new(b.finish()),
                    Col::D(b) => Arc::new(b.finish()),
                    Col::T(b) => Arc::new(b.finish()),
                    Col::B(b) => Arc::new(b.finish()),
                    Col::I(b) => Arc::new(b.finish()),
                }
            })
            .collect();
        let batch = RecordBatch::try_new(self.def.schema(), arrays)?;
        self.writer.write(&batch)?;
        self.pending = 0;
        Ok(())
    }

    pub fn finish(mut self) -> Result<u64> {
        self.flush()?;
        self.writer.close()?;
        Ok(self.rows)
    }
}

fn new_col(t: ColumnType) -> Col {
    match t {
        ColumnType::Utf8 => Col::S(StringBuilder::new()),
        ColumnType::Date32 => Col::D(Date32Builder::new()),
        ColumnType::Timestamp => Col::T(TimestampMicrosecondBuilder::new()),
        ColumnType::Boolean => Col::B(BooleanBuilder::new()),
        ColumnType::Int64 => Col::I(Int64Builder::new()),
    }
}
