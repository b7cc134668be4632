//! The common data model (CDM): every table a node may serve, with column names, Arrow types,
//! nullability and allowed codes. Nodes validate their files against this at start-up.

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use std::sync::Arc;

/// Column that identifies the privacy unit (one youth) in every table that describes a youth.
pub const UNIT_COLUMN: &str = "youth_pid";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Utf8,
    Date32,
    Timestamp,
    Boolean,
    Int64,
}

impl ColumnType {
    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Date32 => DataType::Date32,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Int64 => DataType::Int64,
        }
    }

    /// Whether a physical Arrow type read from a provider's file is acceptable for this column.
    /// String views and large strings are the same logical type; any timestamp unit without a
    /// time zone is accepted and normalised when the table is registered.
    pub fn accepts(self, found: &DataType) -> bool {
        match self {
            ColumnType::Utf8 => matches!(
                found,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ),
            ColumnType::Date32 => matches!(found, DataType::Date32),
            ColumnType::Timestamp => matches!(found, DataType::Timestamp(_, None)),
            ColumnType::Boolean => matches!(found, DataType::Boolean),
            ColumnType::Int64 => matches!(
                found,
                DataType::Int64 | DataType::Int32 | DataType::Int16 | DataType::Int8
            ),
        }
    }
}

/// The first and last day (inclusive) a data-model date or timestamp may hold. Public knowledge,
/// not a property of anyone's records: the totality check relies on it to prove date arithmetic
/// cannot overflow, and a node leaves rows outside it out of every release.
pub const FIRST_DAY: &str = "1900-01-01";
pub const LAST_DAY: &str = "2099-12-31";

/// [`FIRST_DAY`] and the day after [`LAST_DAY`], in days since 1970-01-01.
pub const DAY_RANGE: (i64, i64) = (-25_567, 47_482);

#[derive(Debug, Clone)]
pub struct ColumnDef {
    pub name: &'static str,
    pub ty: ColumnType,
    pub nullable: bool,
    /// Allowed values for coded columns; empty for free columns.
    pub codes: &'static [&'static str],
}

#[derive(Debug, Clone)]
pub struct TableDef {
    pub name: &'static str,
    pub columns: Vec<ColumnDef>,
}

impl TableDef {
    pub fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn schema(&self) -> Arc<Schema> {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(c.name, c.ty.arrow(), c.nullable))
                .collect::<Vec<_>>(),
        ))
    }

    pub fn has_unit(&self) -> bool {
        self.column(UNIT_COLUMN).is_some()
    }

    /// The columns that identify one row among its unit's rows (its record id, or for the
    /// education months the stay and month; for a reference table, among all rows; none for the
    /// panel's responses). A node leaves out rows whose key repeats within their unit, so
    /// ordering by this key orders a unit's rows completely, whatever order they arrive in.
    pub fn row_key(&self) -> &'static [&'static str] {
        match self.name {
            "youth" => &["youth_pid"],
            "stay" => &["stay_id"],
            "move" => &["move_id"],
            "restrictive_measure" => &["measure_id"],
            "incident" => &["incident_id"],
            "unit" => &["unit_id"],
            "care_plan" => &["plan_id"],
            "education" => &["stay_id", "month"],
            // A respondent may answer a question more than once: no key, so nothing over panel
            // rows may depend on their order.
            _ => &[],
        }
    }

    /// The privacy-unit column whose rows this table holds (a youth's or a panel respondent's),
    /// or `None` for a reference table that describes no person (such as `unit`).
    pub fn unit_column(&self) -> Option<&'static str> {
        crate::indicator::PRIVACY_UNITS
            .iter()
            .copied()
            .find(|u| self.column(u).is_some())
    }
}

pub const SEX: &[&str] = &["M", "V", "X"];
pub const JEUGDREGIO: &[&str] = &[
    "JZ01", "JZ02", "JZ03", "JZ04", "JZ05", "JZ06", "JZ07", "JZ08", "JZ09", "JZ10", "JZ11", "JZ12",
    "JZ13", "JZ14", "JZ15", "JZ16", "JZ17", "JZ18", "JZ19", "JZ20", "JZ21", "JZ22", "JZ23", "JZ24",
    "JZ25", "JZ26", "JZ27", "JZ28", "JZ29", "JZ30", "JZ31", "JZ32", "JZ33", "JZ34", "JZ35", "JZ36",
    "JZ37", "JZ38", "JZ39", "JZ40", "JZ41", "JZ42",
];
pub const LEGAL_BASIS: &[&str] = &[
    "machtiging",
    "spoedmachtiging",
    "voorwaardelijke_machtiging",
];
/// CBS "reden beëindiging jeugdhulp" 01–05.
pub const DISCHARGE_REASON: &[&str] = &["01", "02", "03", "04", "05"];
pub const DISCHARGE_DESTINATION: &[&str] = &[
    "thuis",
    "open_jeugdhulp",
    "pleegzorg",
    "jeugdzorgplus_andere_aanbieder",
    "jji",
    "ggz",
    "zelfstandig",
    "onbekend",
];
pub const MOVE_TYPE: &[&str] = &["intern", "doorplaatsing", "jji", "ggz", "time_out"];
pub const MEASURE_TYPE: &[&str] = &[
    "insluiting",
    "afzondering_eigen_kamer",
    "afzondering_ruimte",
    "vastpakken",
    "vastpakken_vasthouden",
    "time_out_overplaatsing",
    "onderzoek_lichaam_kleding",
    "urinecontrole",
    "kamercontrole",
    "beperking_communicatie",
    "beperking_bezoek",
    "cameratoezicht",
    "gebiedsverbod",
    "overig",
];
/// The measure types that count as seclusion (insluiting or afzondering).
pub const SECLUSION_TYPES: &[&str] = &[
    "insluiting",
    "afzondering_eigen_kamer",
    "afzondering_ruimte",
];
pub const ROUTE: &[&str] = &["hulpverleningsplan", "noodsituatie"];
pub const ROOM_TYPE: &[&str] = &[
    "eigen_kamer",
    "afzonderingsruimte",
    "time_out_ruimte",
    "geen",
];
pub const REASON: &[&str] = &[
    "gevaar_zelf",
    "gevaar_ander",
    "onttrekking",
    "verstoring_groep",
    "overig",
];
pub const INCIDENT_TYPE: &[&str] = &[
    "suicidepoging",
    "suicide",
    "ernstige_zelfbeschadiging",
    "weglopen",
    "agressie",
];
pub const UNIT_TYPE: &[&str] = &["groep", "kleinschalig", "crisis", "intensief"];
pub const PANEL_ROLE: &[&str] = &["jongere", "ouder", "professional"];

const fn col(name: &'static str, ty: ColumnType, nullable: bool) -> ColumnDef {
    ColumnDef {
        name,
        ty,
        nullable,
        codes: &[],
    }
}

const fn coded(name: &'static str, codes: &'static [&'static str], nullable: bool) -> ColumnDef {
    ColumnDef {
        name,
        ty: ColumnType::Utf8,
        nullable,
        codes,
    }
}

use ColumnType::*;

/// Every table of the data model, in a stable order.
pub fn tables() -> Vec<TableDef> {
    vec![
        TableDef {
            name: "youth",
            columns: vec![
                col("youth_pid", Utf8, false),
                col("birth_month", Date32, false),
                coded("sex", SEX, false),
                coded("jeugdregio", JEUGDREGIO, false),
            ],
        },
        TableDef {
            name: "stay",
            columns: vec![
                col("stay_id", Utf8, false),
                col("youth_pid", Utf8, false),
                col("unit_id", Utf8, false),
                col("admission_date", Date32, false),
                col("discharge_date", Date32, true),
                coded("legal_basis", LEGAL_BASIS, false),
                col("started_in_crisis", Boolean, false),
                col("tls_request_date", Date32, true),
                coded("discharge_reason", DISCHARGE_REASON, true),
                coded("discharge_destination", DISCHARGE_DESTINATION, true),
            ],
        },
        TableDef {
            name: "move",
            columns: vec![
                col("move_id", Utf8, false),
                col("youth_pid", Utf8, false),
                col("stay_id", Utf8, false),
                col("move_date", Date32, false),
                col("from_unit_id", Utf8, false),
                col("to_unit_id", Utf8, true),
                coded("move_type", MOVE_TYPE, false),
                col("planned", Boolean, false),
            ],
        },
        TableDef {
            name: "restrictive_measure",
            columns: vec![
                col("measure_id", Utf8, false),
                col("youth_pid", Utf8, false),
                col("stay_id", Utf8, false),
                col("unit_id", Utf8, false),
                coded("measure_type", MEASURE_TYPE, false),
                coded("route", ROUTE, false),
                col("start_ts", Timestamp, false),
                col("end_ts", Timestamp, true),
                coded("room_type", ROOM_TYPE, true),
                coded("reason", REASON, true),
                col("planned", Boolean, false),
                col("gw_consent_ts", Timestamp, true),
            ],
        },
        TableDef {
            name: "incident",
            columns: vec![
                col("incident_id", Utf8, false),
                col("youth_pid", Utf8, false),
                col("stay_id", Utf8, false),
                col("incident_ts", Timestamp, false),
                coded("type", INCIDENT_TYPE, false),
            ],
        },
        TableDef {
            name: "unit",
            columns: vec![
                col("unit_id", Utf8, false),
                coded("unit_type", UNIT_TYPE, false),
                col("max_group_size", Int64, false),
                col("has_safe_room", Boolean, false),
            ],
        },
        TableDef {
            name: "care_plan",
            columns: vec![
                col("plan_id", Utf8, false),
                col("youth_pid", Utf8, false),
                col("stay_id", Utf8, false),
                col("plan_date", Date32, false),
                col("youth_participated", Boolean, false),
                col("parents_participated", Boolean, false),
            ],
        },
        TableDef {
            name: "education",
            columns: vec![
                col("youth_pid", Utf8, false),
                col("stay_id", Utf8, false),
                col("month", Date32, false),
                col("enrolled", Boolean, false),
                col("planned_hours", Int64, false),
                col("attended_hours", Int64, false),
            ],
        },
        TableDef {
            name: "panel_response",
            columns: vec![
                col("respondent_pid", Utf8, false),
                coded("role", PANEL_ROLE, false),
                col("quarter", Utf8, false),
                col("question_id", Utf8, false),
                col("score", Int64, false),
            ],
        },
    ]
}

pub fn table(name: &str) -> Option<TableDef> {
    tables().into_iter().find(|t| t.name == name)
}

/// Code list of a coded column, addressed as `table.column`.
pub fn codes(reference: &str) -> Option<&'static [&'static str]> {
    let (t, c) = reference.split_once('.')?;
    let table = table(t)?;
    let column = table.column(c)?;
    (!column.codes.is_empty()).then_some(column.codes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_youth_table_but_unit_and_panel_has_the_unit_column() {
        for t in tables() {
            let expected = !matches!(t.name, "unit" | "panel_response");
            assert_eq!(t.has_unit(), expected, "{}", t.name);
        }
    }

    #[test]
    fn code_lists_resolve() {
        assert_eq!(
            codes("restrictive_measure.measure_type").map(|c| c.len()),
            Some(14)
        );
        assert!(codes("restrictive_measure.start_ts").is_none());
        assert!(codes("nope.x").is_none());
    }
}
