//! unsflow_speedups: the two hot loops of unsflow's MQTT -> Parquet path, compiled.
//!
//! - `scan_publishes`: decodes the MQTT PUBLISH packets at the front of a socket read into
//!   columns, with the acks of the QoS 1/2 messages as ready-to-send bytes. Same contract
//!   and results as `unsflow.sources._mqtt_wire.scan_publishes` (the Python reference).
//! - `json_columns`: JSON object payloads -> Arrow column buffers, for the common case of
//!   flat objects whose fields keep one type, read by a strict parser of that grammar
//!   (memchr finds the end of a string). Anything else (nested values, a number
//!   that does not fit int64, mixed types in a field, invalid JSON, ...) returns None and
//!   unsflow takes its Python path, which owns every rule for those cases; so this
//!   module never decides a case the Python path would decide differently.
//!
//! Both are optional: without this module unsflow runs the same code in Python.

use std::borrow::Cow;
use std::collections::HashMap;

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple, PyType};

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

/// 2**53: the largest integer magnitude below which every int has an exact double.
const EXACT_IN_DOUBLE: u64 = 1 << 53;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Null,
    Int,
    Float,
    Bool,
    Str,
}

// ------------------------------------------------------------------ reused column buffers

/// Big column buffers (a flush's text) kept for the next flush instead of freed: a fresh
/// buffer of tens of MB comes from mmap and faults in every page it is written to, which
/// cost more than the copy into it (10 KB payloads: ~3 page faults and ~3.5 us per
/// message). At most `POOL_BUFFERS` buffers and `POOL_BYTES` bytes wait here; smaller
/// buffers than `POOL_MIN` come from malloc's heap anyway.
static POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
const POOL_BUFFERS: usize = 2;
const POOL_BYTES: usize = 128 << 20;
const POOL_MIN: usize = 1 << 20;

/// An empty buffer of at least `capacity` bytes: the biggest kept one (grown if need be:
/// realloc keeps its pages) or a new one.
fn pooled(capacity: usize) -> Vec<u8> {
    let kept = if capacity >= POOL_MIN {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let biggest = (0..pool.len()).max_by_key(|&i| pool[i].capacity());
        biggest.map(|i| pool.swap_remove(i))
    } else {
        None
    };
    let mut buf = kept.unwrap_or_default();
    buf.reserve_exact(capacity);
    buf
}

/// Keep `buf` for a later `pooled` when it is big and there is room; else free it.
fn give_back(mut buf: Vec<u8>) {
    if buf.capacity() < POOL_MIN || buf.capacity() > POOL_BYTES {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let held: usize = pool.iter().map(|b| b.capacity()).sum();
    if pool.len() < POOL_BUFFERS && held + buf.capacity() <= POOL_BYTES {
        buf.clear();
        pool.push(buf);
    } else if let Some(i) = (0..pool.len()).min_by_key(|&i| pool[i].capacity()) {
        // Full: keep the bigger of this one and the smallest kept one, if it fits.
        let smallest = pool[i].capacity();
        if buf.capacity() > smallest && held - smallest + buf.capacity() <= POOL_BYTES {
            buf.clear();
            pool[i] = buf;
        }
    }
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
    hint: (usize, usize), // (rows, payload bytes) of the whole batch: capacity up front
}

impl Column {
    fn new(name: String, rows_before: usize, hint: (usize, usize)) -> Self {
        let mut col = Column {
            name, kind: Kind::Null, rows: 0, nulls: 0, valid: Vec::with_capacity(hint.0),
            ints: Vec::new(), floats: Vec::new(), bools: Vec::new(), offsets: vec![0],
            text: Vec::new(), last_row: usize::MAX, hint,
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
        let rows = self.hint.0.max(n);
        // Capacity for the whole batch now: no regrowth (a copy of everything so far)
        // later. For text the payloads' size bounds it; untouched pages cost no memory.
        match kind {
            Kind::Int => {
                self.ints.reserve_exact(rows);
                self.ints.resize(n, 0)
            }
            Kind::Float => {
                self.floats.reserve_exact(rows);
                self.floats.resize(n, 0.0)
            }
            Kind::Bool => self.bools.resize(n, false),
            Kind::Str => {
                self.offsets.reserve_exact(rows + 1);
                self.offsets.resize(n + 1, 0);
                self.text = pooled(self.hint.1);
            }
            Kind::Null => {}
        }
    }

    fn push(&mut self, value: Scalar<'_>) -> R<()> {
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
            // ints and floats -> float64 (the Python path's rule). pyarrow refuses an int
            // that a double cannot hold exactly: such a column is left to the Python path.
            if self.ints.iter().any(|&i| i.unsigned_abs() > EXACT_IN_DOUBLE) {
                return Err(());
            }
            self.floats = Vec::with_capacity(self.hint.0.max(self.rows));
            self.floats.extend(self.ints.iter().map(|&i| i as f64));
            self.ints = Vec::new();
            self.kind = Kind::Float;
        } else if !(self.kind == wanted || (self.kind == Kind::Float && wanted == Kind::Int)) {
            return Err(()); // any other mix: the Python path's rule (text) decides
        }
        self.rows += 1;
        self.valid.push(true);
        match (self.kind, value) {
            (Kind::Int, Scalar::Int(i)) => self.ints.push(i),
            (Kind::Float, Scalar::Int(i)) if i.unsigned_abs() <= EXACT_IN_DOUBLE => {
                self.floats.push(i as f64)
            }
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
    hint: (usize, usize),
}

/// A strict reader of one JSON object whose values are scalars (RFC 8259 grammar).
///
/// It accepts only what it is sure of: anything else (a nested value, a number out of
/// int64 or float range, a lone surrogate, a syntax error, ...) is `Err(())`, and the
/// Python path (orjson) decides that payload. The payload is valid UTF-8 (checked
/// first), so string bytes between escapes can be copied as they are.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

type R<T> = Result<T, ()>;

impl<'a> Reader<'a> {
    fn ws(&mut self) {
        while let Some(&b) = self.data.get(self.pos) {
            if b == b' ' || b == b'\n' || b == b'\r' || b == b'\t' {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn eat(&mut self, byte: u8) -> R<()> {
        self.ws();
        if self.data.get(self.pos) == Some(&byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(())
        }
    }

    fn literal(&mut self, word: &[u8]) -> R<()> {
        if self.data[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(())
        }
    }

    fn hex4(&mut self) -> R<u32> {
        let digits = self.data.get(self.pos..self.pos + 4).ok_or(())?;
        let text = std::str::from_utf8(digits).map_err(|_| ())?;
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(());
        }
        self.pos += 4;
        u32::from_str_radix(text, 16).map_err(|_| ())
    }

    /// The string at `pos` (after its opening quote): borrowed when it has no escapes.
    fn string(&mut self) -> R<Cow<'a, str>> {
        let data = self.data;
        let mut owned: Option<String> = None;
        let mut start = self.pos;
        loop {
            let at = start + memchr::memchr2(b'"', b'\\', &data[start..]).ok_or(())?;
            let segment = &data[start..at];
            // One pass for both checks; no early exit: the compiler makes it SIMD.
            let (control, high) = segment.iter().fold((false, false), |(c, h), &b| {
                (c | (b < 0x20), h | (b >= 0x80))
            });
            if control {
                return Err(()); // a control character must be escaped
            }
            // ASCII is UTF-8; other bytes are checked here, the only place they may be
            // (outside strings the grammar takes ASCII only). The segment is cut at ASCII
            // bytes ('"', '\\'), never inside a character.
            let text = if high {
                std::str::from_utf8(segment).map_err(|_| ())?
            } else {
                unsafe { std::str::from_utf8_unchecked(segment) }
            };
            if data[at] == b'"' {
                self.pos = at + 1;
                return Ok(match owned {
                    None => Cow::Borrowed(text),
                    Some(mut s) => {
                        s.push_str(text);
                        Cow::Owned(s)
                    }
                });
            }
            let s = owned.get_or_insert_with(String::new);
            s.push_str(text);
            self.pos = at + 1;
            let escape = *data.get(self.pos).ok_or(())?;
            self.pos += 1;
            match escape {
                b'"' => s.push('"'),
                b'\\' => s.push('\\'),
                b'/' => s.push('/'),
                b'b' => s.push('\u{8}'),
                b'f' => s.push('\u{c}'),
                b'n' => s.push('\n'),
                b'r' => s.push('\r'),
                b't' => s.push('\t'),
                b'u' => {
                    let first = self.hex4()?;
                    let code = if (0xD800..0xDC00).contains(&first) {
                        // a high surrogate: a low one must follow
                        self.literal(b"\\u")?;
                        let second = self.hex4()?;
                        if !(0xDC00..0xE000).contains(&second) {
                            return Err(());
                        }
                        0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                    } else if (0xDC00..0xE000).contains(&first) {
                        return Err(()); // a lone low surrogate
                    } else {
                        first
                    };
                    s.push(char::from_u32(code).ok_or(())?);
                }
                _ => return Err(()),
            }
            start = self.pos;
        }
    }

    /// A number by the JSON grammar: an integer literal is an int64 (or refused), any
    /// other a finite float (correctly rounded, as Python and orjson parse it).
    fn number(&mut self) -> R<Scalar<'a>> {
        let data = self.data;
        let begin = self.pos;
        let mut p = begin;
        if data.get(p) == Some(&b'-') {
            p += 1;
        }
        match data.get(p) {
            Some(b'0') => p += 1,
            Some(b'1'..=b'9') => {
                while matches!(data.get(p), Some(b'0'..=b'9')) {
                    p += 1;
                }
            }
            _ => return Err(()),
        }
        let mut integer = true;
        if data.get(p) == Some(&b'.') {
            integer = false;
            p += 1;
            if !matches!(data.get(p), Some(b'0'..=b'9')) {
                return Err(());
            }
            while matches!(data.get(p), Some(b'0'..=b'9')) {
                p += 1;
            }
        }
        if matches!(data.get(p), Some(b'e' | b'E')) {
            integer = false;
            p += 1;
            if matches!(data.get(p), Some(b'+' | b'-')) {
                p += 1;
            }
            if !matches!(data.get(p), Some(b'0'..=b'9')) {
                return Err(());
            }
            while matches!(data.get(p), Some(b'0'..=b'9')) {
                p += 1;
            }
        }
        self.pos = p;
        let text = std::str::from_utf8(&data[begin..p]).map_err(|_| ())?;
        if integer {
            // Beyond int64 the Python path writes the number as text (or a float): its call.
            return text.parse::<i64>().map(Scalar::Int).map_err(|_| ());
        }
        let value = text.parse::<f64>().map_err(|_| ())?;
        if value.is_finite() { Ok(Scalar::Float(value)) } else { Err(()) }
    }

    fn value(&mut self) -> R<Scalar<'a>> {
        self.ws();
        match *self.data.get(self.pos).ok_or(())? {
            b'"' => {
                self.pos += 1;
                self.string().map(Scalar::Str)
            }
            b't' => self.literal(b"true").map(|_| Scalar::Bool(true)),
            b'f' => self.literal(b"false").map(|_| Scalar::Bool(false)),
            b'n' => self.literal(b"null").map(|_| Scalar::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(()), // an object, an array, or not JSON: the Python path decides
        }
    }

    /// One record into `b` (row `b.rows`).
    fn record(&mut self, b: &mut Builder) -> R<()> {
        let row = b.rows;
        self.eat(b'{')?;
        self.ws();
        if self.data.get(self.pos) == Some(&b'}') {
            self.pos += 1;
        } else {
            loop {
                self.eat(b'"')?;
                let key = self.string()?;
                self.eat(b':')?;
                let value = self.value()?;
                let at = match b.index.get(key.as_ref()) {
                    Some(&at) => at,
                    None => {
                        let at = b.columns.len();
                        b.index.insert(key.to_string(), at);
                        b.columns.push(Column::new(key.into_owned(), row, b.hint));
                        at
                    }
                };
                let col = &mut b.columns[at];
                if col.last_row == row {
                    return Err(()); // a duplicate key
                }
                col.last_row = row;
                col.push(value)?;
                self.ws();
                match self.data.get(self.pos) {
                    Some(b',') => self.pos += 1,
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(()),
                }
            }
        }
        self.ws();
        if self.pos != self.data.len() {
            return Err(()); // something after the object
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
    let bytes = payloads.iter().map(|p| p.len()).sum();
    let mut builder = Builder { columns: Vec::new(), index: HashMap::new(), rows: 0,
                                hint: (payloads.len(), bytes) };
    for payload in payloads {
        let data: &[u8] = payload.as_ref();
        // Invalid UTF-8 anywhere fails the reader (strings are checked, the rest must be
        // ASCII): orjson refuses such a payload, and so does the Python path.
        Reader { data, pos: 0 }.record(&mut builder).ok()?;
    }
    Some(builder)
}

/// Bytes owned by Rust, lent to Python through the buffer protocol (no copy):
/// `pyarrow.py_buffer(Buffer)` wraps them as an Arrow buffer.
#[pyclass(module = "unsflow_speedups", frozen)]
struct Buffer {
    data: Vec<u8>,
}

#[pymethods]
impl Buffer {
    fn __len__(&self) -> usize {
        self.data.len()
    }

    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut pyo3::ffi::Py_buffer,
                            flags: std::os::raw::c_int) -> PyResult<()> {
        let data = &slf.get().data;
        // Read-only: PyBuffer_FillInfo refuses a writable request, and keeps a reference
        // to this object in the view, so the bytes live as long as any view of them.
        let rc = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(view, slf.as_ptr(), data.as_ptr() as *mut _,
                                         data.len() as pyo3::ffi::Py_ssize_t, 1, flags)
        };
        if rc == -1 { Err(PyErr::fetch(slf.py())) } else { Ok(()) }
    }

    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {}
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // The last view is gone (Arrow dropped the column): the bytes may serve again.
        give_back(std::mem::take(&mut self.data));
    }
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
/// Arrow bitmaps; string offsets are int32 (Arrow's string layout). Data and offsets are
/// `Buffer`s (bytes lent without a copy), validity is bytes.
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
            Some(o) => Bound::new(py, Buffer { data: o })?.into_any(),
            None => py.None().into_bound(py),
        };
        out.append(PyTuple::new(py, [
            PyString::new(py, &col.name).into_any(),
            PyString::new(py, kind).into_any(),
            col.nulls.into_pyobject(py)?.into_any(),
            validity,
            Bound::new(py, Buffer { data })?.into_any(),
            offsets,
        ])?)?;
    }
    Ok(Some(out))
}

#[pymodule]
fn unsflow_speedups(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<TopicCache>()?;
    m.add_class::<Buffer>()?;
    m.add_function(wrap_pyfunction!(scan_publishes, m)?)?;
    m.add_function(wrap_pyfunction!(json_columns, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
