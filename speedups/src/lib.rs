//! unsflow_speedups: the two hot loops of unsflow's MQTT -> Parquet path, compiled.
//!
//! - `scan_publishes`: decodes the MQTT PUBLISH packets at the front of a socket read into
//!   columns, with the acks of the QoS 1/2 messages as ready-to-send bytes. Same contract
//!   and results as `unsflow.sources._mqtt_wire.scan_publishes` (the Python reference).
//! - `json_columns`: JSON object payloads -> Arrow column buffers, for the common case of
//!   flat objects whose fields keep one type. Anything else (nested values, a number
//!   that does not fit int64, mixed types in a field, invalid JSON, ...) returns None and
//!   unsflow takes its Python path, which owns every rule for those cases; so this
//!   module never decides a case the Python path would decide differently.
//!
//! Both are optional: without this module unsflow runs the same code in Python.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple, PyType};
use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, Visitor};

// ------------------------------------------------------------------ MQTT

const PUBLISH: u8 = 3;
const TOPIC_CACHE_SIZE: usize = 65536;

static MALFORMED: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn malformed(py: Python<'_>, why: String) -> PyErr {
    match MALFORMED.get_or_try_init(py, || -> PyResult<Py<PyType>> {
        let module = py.import("unsflow.sources._mqtt_wire")?;
        Ok(module.getattr("MalformedPacket")?.cast_into::<PyType>()?.unbind())
    }) {
        Ok(kind) => PyErr::from_type(kind.bind(py).clone(), why),
        Err(err) => err,
    }
}

/// Topic bytes -> str, remembered per connection (a UNS has a bounded set of topics).
#[pyclass(module = "unsflow_speedups")]
struct TopicCache {
    topics: HashMap<Vec<u8>, Py<PyString>>,
}

#[pymethods]
impl TopicCache {
    #[new]
    fn new() -> Self {
        TopicCache { topics: HashMap::new() }
    }

    fn __len__(&self) -> usize {
        self.topics.len()
    }
}

/// (start of the variable header, end of the packet), None when the fixed header is not
/// complete yet. Err for a remaining length longer than 4 bytes.
fn header(data: &[u8], pos: usize) -> Result<Option<(usize, usize)>, String> {
    let mut length: usize = 0;
    let mut shift = 0;
    for i in 1..5 {
        if pos + i >= data.len() {
            return Ok(None);
        }
        let byte = data[pos + i];
        length |= ((byte & 0x7F) as usize) << shift;
        if byte & 0x80 == 0 {
            return Ok(Some((pos + i + 1, pos + i + 1 + length)));
        }
        shift += 7;
    }
    Err("remaining length longer than 4 bytes".into())
}

fn read_varint(data: &[u8], pos: usize, end: usize) -> Result<(usize, usize), String> {
    let mut value: usize = 0;
    let mut shift = 0;
    for i in 0..4 {
        if pos + i >= end {
            return Err("variable byte integer runs past the packet".into());
        }
        let byte = data[pos + i];
        value |= ((byte & 0x7F) as usize) << shift;
        if byte & 0x80 == 0 {
            return Ok((value, pos + i + 1));
        }
        shift += 7;
    }
    Err("variable byte integer longer than 4 bytes".into())
}

fn read_u16(data: &[u8], pos: usize, end: usize, what: &str) -> Result<usize, String> {
    if pos + 2 > end {
        return Err(format!("{what} runs past the packet"));
    }
    Ok(((data[pos] as usize) << 8) | data[pos + 1] as usize)
}

fn utf8<'a>(data: &'a [u8], pos: usize, end: usize) -> Result<(&'a str, usize), String> {
    let n = read_u16(data, pos, end, "string length")?;
    if pos + 2 + n > end {
        return Err("string runs past the packet".into());
    }
    match std::str::from_utf8(&data[pos + 2..pos + 2 + n]) {
        Ok(text) => Ok((text, pos + 2 + n)),
        Err(err) => Err(format!("string is not valid UTF-8 (byte {})", err.valid_up_to())),
    }
}

/// An MQTT 5 property block: {name: [values]} with gmqtt's names, as the Python reference.
fn properties<'py>(py: Python<'py>, data: &[u8], pos: usize, end: usize)
                   -> PyResult<(Bound<'py, PyDict>, usize)> {
    let bad = |why: String| malformed(py, why);
    let (length, mut pos) = read_varint(data, pos, end).map_err(bad)?;
    let stop = pos + length;
    if stop > end {
        return Err(malformed(py, "properties run past the packet".into()));
    }
    let props = PyDict::new(py);
    while pos < stop {
        let ident = data[pos];
        pos += 1;
        let (name, kind) = match ident {
            0x01 => ("payload_format_id", 'B'),
            0x02 => ("message_expiry_interval", 'L'),
            0x03 => ("content_type", 's'),
            0x08 => ("response_topic", 's'),
            0x09 => ("correlation_data", 'b'),
            0x0B => ("subscription_identifier", 'v'),
            0x11 => ("session_expiry_interval", 'L'),
            0x12 => ("assigned_client_identifier", 's'),
            0x13 => ("server_keep_alive", 'H'),
            0x15 => ("auth_method", 's'),
            0x16 => ("auth_data", 'b'),
            0x17 => ("request_problem_info", 'B'),
            0x18 => ("will_delay_interval", 'L'),
            0x19 => ("request_response_info", 'B'),
            0x1A => ("response_info", 's'),
            0x1C => ("server_reference", 's'),
            0x1F => ("reason_string", 's'),
            0x21 => ("receive_maximum", 'H'),
            0x22 => ("topic_alias_maximum", 'H'),
            0x23 => ("topic_alias", 'H'),
            0x24 => ("max_qos", 'B'),
            0x25 => ("retain_available", 'B'),
            0x26 => ("user_property", 'p'),
            0x27 => ("maximum_packet_size", 'L'),
            0x28 => ("wildcard_subscription_available", 'B'),
            0x29 => ("sub_id_available", 'B'),
            0x2A => ("shared_subscription_available", 'B'),
            other => return Err(malformed(py, format!("unknown property id {other:#x}"))),
        };
        let value: Bound<'py, PyAny> = match kind {
            'B' | 'H' | 'L' => {
                let size = match kind { 'B' => 1, 'H' => 2, _ => 4 };
                if pos + size > stop {
                    return Err(malformed(py, format!("property {name} runs past the properties")));
                }
                let mut v: u64 = 0;
                for b in &data[pos..pos + size] {
                    v = (v << 8) | *b as u64;
                }
                pos += size;
                v.into_pyobject(py)?.into_any()
            }
            's' => {
                let (text, next) = utf8(data, pos, stop).map_err(bad)?;
                pos = next;
                PyString::new(py, text).into_any()
            }
            'b' => {
                let n = read_u16(data, pos, stop, "binary length").map_err(bad)?;
                if pos + 2 + n > stop {
                    return Err(malformed(py, "binary data runs past the packet".into()));
                }
                let value = PyBytes::new(py, &data[pos + 2..pos + 2 + n]).into_any();
                pos += 2 + n;
                value
            }
            'v' => {
                let (v, next) = read_varint(data, pos, stop).map_err(bad)?;
                pos = next;
                v.into_pyobject(py)?.into_any()
            }
            _ => {
                let (key, next) = utf8(data, pos, stop).map_err(bad)?;
                let (text, next) = utf8(data, next, stop).map_err(bad)?;
                pos = next;
                PyTuple::new(py, [PyString::new(py, key), PyString::new(py, text)])?.into_any()
            }
        };
        match props.get_item(name)? {
            Some(list) => list.cast_into::<PyList>()?.append(value)?,
            None => props.set_item(name, PyList::new(py, [value])?)?,
        }
    }
    Ok((props, stop))
}

/// Decode the PUBLISH packets at `pos`, up to `limit`: see the Python reference,
/// `unsflow.sources._mqtt_wire.scan_publishes`, for the contract.
#[pyfunction]
fn scan_publishes<'py>(py: Python<'py>, data: &[u8], pos: usize, v5: bool, limit: usize,
                       seen: &Bound<'py, TopicCache>) -> PyResult<Bound<'py, PyTuple>> {
    let mut cache = seen.borrow_mut();
    let n = data.len();
    let mut pos = pos;
    let mut topics: Vec<Bound<'py, PyString>> = Vec::new();
    let mut payloads: Vec<Bound<'py, PyBytes>> = Vec::new();
    let mut flags: Vec<u8> = Vec::new();
    let mut props: Vec<Bound<'py, PyAny>> = Vec::new();
    let mut acks: Vec<u8> = Vec::new();
    let none = py.None().into_bound(py);
    while pos + 1 < n && topics.len() < limit {
        let first = data[pos];
        if first >> 4 != PUBLISH {
            break;
        }
        let (start, end) = match header(data, pos).map_err(|e| malformed(py, e))? {
            Some(found) => found,
            None => break,
        };
        if end > n {
            break;
        }
        if start + 2 > end {
            return Err(malformed(py, "PUBLISH without a topic".into()));
        }
        let mut p = start + 2 + (((data[start] as usize) << 8) | data[start + 1] as usize);
        if p > end {
            return Err(malformed(py, "PUBLISH header runs past the packet".into()));
        }
        let raw = &data[start + 2..p];
        let topic = match cache.topics.get(raw) {
            Some(topic) => topic.bind(py).clone(),
            None => {
                let text = std::str::from_utf8(raw).map_err(|e| malformed(py, format!(
                    "PUBLISH topic is not valid UTF-8 (byte {})", e.valid_up_to())))?;
                let topic = PyString::new(py, text);
                if cache.topics.len() < TOPIC_CACHE_SIZE {
                    cache.topics.insert(raw.to_vec(), topic.clone().unbind());
                }
                topic
            }
        };
        let qos = (first >> 1) & 3;
        if qos != 0 {
            if qos == 3 {
                return Err(malformed(py, "PUBLISH with QoS 3".into()));
            }
            if p + 2 > end {
                return Err(malformed(py, "PUBLISH header runs past the packet".into()));
            }
            acks.push(if qos == 1 { 0x40 } else { 0x50 });
            acks.push(2);
            acks.extend_from_slice(&data[p..p + 2]);
            p += 2;
        }
        let mut prop = none.clone();
        if v5 {
            if p < end && data[p] == 0 {
                p += 1;
            } else {
                let (parsed, next) = properties(py, data, p, end)?;
                prop = parsed.into_any();
                p = next;
            }
        }
        if p > end {
            return Err(malformed(py, "PUBLISH header runs past the packet".into()));
        }
        topics.push(topic);
        payloads.push(PyBytes::new(py, &data[p..end]));
        flags.push(first & 0x0F);
        props.push(prop);
        pos = end;
    }
    PyTuple::new(py, [
        pos.into_pyobject(py)?.into_any(),
        PyList::new(py, topics)?.into_any(),
        PyList::new(py, payloads)?.into_any(),
        PyList::new(py, flags)?.into_any(),
        PyList::new(py, props)?.into_any(),
        PyBytes::new(py, &acks).into_any(),
    ])
}

// ------------------------------------------------------------------ JSON -> Arrow columns

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Null,
    Int,
    Float,
    Bool,
    Str,
}

/// One column being built: Arrow layouts (validity bitmap, values or offsets + data).
struct Column {
    name: String,
    kind: Kind,
    rows: usize,
    nulls: usize,
    valid: Vec<bool>,
    ints: Vec<i64>,
    floats: Vec<f64>,
    bools: Vec<bool>,
    offsets: Vec<i32>,
    text: Vec<u8>,
    last_row: usize, // the row that last set this column (duplicate keys, missing fields)
}

impl Column {
    fn new(name: String, rows_before: usize) -> Self {
        let mut col = Column {
            name, kind: Kind::Null, rows: 0, nulls: 0, valid: Vec::new(), ints: Vec::new(),
            floats: Vec::new(), bools: Vec::new(), offsets: vec![0], text: Vec::new(),
            last_row: usize::MAX,
        };
        for _ in 0..rows_before {
            col.push_null();
        }
        col
    }

    fn push_null(&mut self) {
        self.rows += 1;
        self.nulls += 1;
        self.valid.push(false);
        match self.kind {
            Kind::Int => self.ints.push(0),
            Kind::Float => self.floats.push(0.0),
            Kind::Bool => self.bools.push(false),
            Kind::Str => self.offsets.push(self.text.len() as i32),
            Kind::Null => {}
        }
    }

    /// Switch a column of nulls only to `kind` (placeholders for the rows so far).
    fn become_kind(&mut self, kind: Kind) {
        self.kind = kind;
        let n = self.rows;
        match kind {
            Kind::Int => self.ints.resize(n, 0),
            Kind::Float => self.floats.resize(n, 0.0),
            Kind::Bool => self.bools.resize(n, false),
            Kind::Str => self.offsets.resize(n + 1, 0),
            Kind::Null => {}
        }
    }

    fn push(&mut self, value: Scalar<'_>) -> Result<(), ()> {
        let wanted = match value {
            Scalar::Null => {
                self.push_null();
                return Ok(());
            }
            Scalar::Int(_) => Kind::Int,
            Scalar::Float(_) => Kind::Float,
            Scalar::Bool(_) => Kind::Bool,
            Scalar::Str(_) => Kind::Str,
        };
        if self.kind == Kind::Null {
            self.become_kind(wanted);
        } else if self.kind == Kind::Int && wanted == Kind::Float {
            // ints and floats -> float64 (as the Python path's rule), ints converted exactly
            // as Python's float(int) does (round to nearest).
            self.floats = self.ints.iter().map(|&i| i as f64).collect();
            self.ints = Vec::new();
            self.kind = Kind::Float;
        } else if !(self.kind == wanted || (self.kind == Kind::Float && wanted == Kind::Int)) {
            return Err(()); // any other mix: the Python path's rule (text) decides
        }
        self.rows += 1;
        self.valid.push(true);
        match (self.kind, value) {
            (Kind::Int, Scalar::Int(i)) => self.ints.push(i),
            (Kind::Float, Scalar::Int(i)) => self.floats.push(i as f64),
            (Kind::Float, Scalar::Float(f)) => self.floats.push(f),
            (Kind::Bool, Scalar::Bool(b)) => self.bools.push(b),
            (Kind::Str, Scalar::Str(s)) => {
                self.text.extend_from_slice(s.as_bytes());
                // Arrow's string layout has int32 offsets: a bigger column is left to Python.
                let end = i32::try_from(self.text.len()).map_err(|_| ())?;
                self.offsets.push(end);
            }
            _ => return Err(()),
        }
        Ok(())
    }
}

enum Scalar<'a> {
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(Cow<'a, str>),
}

struct Builder {
    columns: Vec<Column>,
    index: HashMap<String, usize>,
    rows: usize,
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON scalar")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        // Beyond int64 the Python path writes the number as text: leave it to it.
        i64::try_from(v).map(Scalar::Int).map_err(|_| E::custom("int beyond int64"))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // "-0" is the int 0 to orjson and -0.0 here: too close to call, let Python decide.
        if v == 0.0 && v.is_sign_negative() {
            return Err(E::custom("negative zero"));
        }
        Ok(Scalar::Float(v))
    }
    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<Self::Value, A::Error> {
        Err(A::Error::custom("nested object"))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _seq: A) -> Result<Self::Value, A::Error> {
        Err(A::Error::custom("nested array"))
    }
}

struct ScalarSeed;

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Scalar<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct RecordSeed<'b> {
    builder: &'b mut Builder,
}

impl<'de, 'b> DeserializeSeed<'de> for RecordSeed<'b> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'b> Visitor<'de> for RecordSeed<'b> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let b = self.builder;
        let row = b.rows;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let value = map.next_value_seed(ScalarSeed)?;
            let at = match b.index.get(key.as_ref()) {
                Some(&at) => at,
                None => {
                    let at = b.columns.len();
                    b.index.insert(key.clone().into_owned(), at);
                    b.columns.push(Column::new(key.into_owned(), row));
                    at
                }
            };
            let col = &mut b.columns[at];
            if col.last_row == row {
                return Err(A::Error::custom("duplicate key"));
            }
            col.last_row = row;
            col.push(value).map_err(|_| A::Error::custom("mixed types"))?;
        }
        for col in b.columns.iter_mut() {
            if col.last_row != row {
                col.last_row = row;
                col.push_null();
            }
        }
        b.rows += 1;
        Ok(())
    }
}

fn build(payloads: &[PyBackedBytes]) -> Option<Builder> {
    let mut builder = Builder { columns: Vec::new(), index: HashMap::new(), rows: 0 };
    for payload in payloads {
        let mut de = serde_json::Deserializer::from_slice(payload.as_ref());
        RecordSeed { builder: &mut builder }.deserialize(&mut de).ok()?;
        de.end().ok()?;
    }
    Some(builder)
}

fn bitmap(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, &bit) in bits.iter().enumerate() {
        if bit {
            out[i >> 3] |= 1 << (i & 7);
        }
    }
    out
}

fn le_bytes<T: Copy, const N: usize>(values: &[T], to: fn(T) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * N);
    for &v in values {
        out.extend_from_slice(&to(v));
    }
    out
}

/// Columns of the JSON objects in `payloads` (bytes), one row per payload, or None when a
/// payload is not a flat object of plain values with one type per field (see the module
/// comment). A column is `(name, kind, null_count, validity, data, offsets)`: kind is
/// null, int64, float64, bool or string; validity (None without nulls) and bool data are
/// Arrow bitmaps; string offsets are int32 (Arrow's string layout).
#[pyfunction]
fn json_columns<'py>(py: Python<'py>, payloads: Vec<PyBackedBytes>)
                     -> PyResult<Option<Bound<'py, PyList>>> {
    let built = py.detach(|| build(&payloads));
    let Some(builder) = built else {
        return Ok(None);
    };
    let out = PyList::empty(py);
    for col in builder.columns {
        let validity = if col.nulls > 0 && col.kind != Kind::Null {
            PyBytes::new(py, &bitmap(&col.valid)).into_any()
        } else {
            py.None().into_bound(py)
        };
        let (kind, data, offsets) = match col.kind {
            Kind::Null => ("null", Vec::new(), None),
            Kind::Int => ("int64", le_bytes(&col.ints, i64::to_le_bytes), None),
            Kind::Float => ("float64", le_bytes(&col.floats, f64::to_le_bytes), None),
            Kind::Bool => ("bool", bitmap(&col.bools), None),
            Kind::Str => ("string", col.text, Some(le_bytes(&col.offsets, i32::to_le_bytes))),
        };
        let offsets = match offsets {
            Some(o) => PyBytes::new(py, &o).into_any(),
            None => py.None().into_bound(py),
        };
        out.append(PyTuple::new(py, [
            PyString::new(py, &col.name).into_any(),
            PyString::new(py, kind).into_any(),
            col.nulls.into_pyobject(py)?.into_any(),
            validity,
            PyBytes::new(py, &data).into_any(),
            offsets,
        ])?)?;
    }
    Ok(Some(out))
}

#[pymodule]
fn unsflow_speedups(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<TopicCache>()?;
    m.add_function(wrap_pyfunction!(scan_publishes, m)?)?;
    m.add_function(wrap_pyfunction!(json_columns, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
