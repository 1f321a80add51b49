//! Positional Avro decoders for the two hot input records, `JobSubmitted`
//! and `JobCompleted` (nearly every message the service reads).
//!
//! Why by hand: the generic serde path identifies each field by name
//! (a string match per field per record) and goes through a visitor per
//! value; for these fixed, flat schemas reading the fields in schema order
//! does the same work in about half the time, and names the field that
//! failed exactly. The schemas are compiled into the binary (`schemas/`), so
//! the field order is fixed; a test decodes random records with apache-avro's
//! own reader and this one and checks they agree, and that every truncation
//! of a record is an error (never a panic).

use super::avro::CodecError;
use super::{JobCompleted, JobStatus, JobSubmitted, Market, SpotSignal, SpotSignalKind, Text};

/// A cursor over one datum that names the record and field of any error.
struct Datum<'a> {
    rest: &'a [u8],
    schema: &'static str,
}

impl<'a> Datum<'a> {
    #[cold]
    fn err(&self, field: &'static str, message: impl Into<String>) -> CodecError {
        CodecError::Invalid {
            schema: self.schema,
            field,
            message: message.into(),
        }
    }

    /// A zigzag varint of at most 10 bytes (Avro `long`).
    ///
    /// Inlined, with the error built out of line: a record is a dozen of
    /// these, and as calls returning a `Result` through memory they were a
    /// fifth of the decode on `prescale bench kafka`.
    #[inline(always)]
    fn long(&mut self, field: &'static str) -> Result<i64, CodecError> {
        let mut v: u64 = 0;
        for (i, &b) in self.rest.iter().enumerate().take(10) {
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.rest = &self.rest[i + 1..];
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        Err(self.long_err(field))
    }

    #[cold]
    #[inline(never)]
    fn long_err(&self, field: &'static str) -> CodecError {
        if self.rest.len() < 10 {
            self.err(field, "record ends inside a number")
        } else {
            self.err(field, "number is longer than 10 bytes")
        }
    }

    #[inline(always)]
    fn int(&mut self, field: &'static str) -> Result<i32, CodecError> {
        let v = self.long(field)?;
        i32::try_from(v).map_err(|_| self.err(field, format!("{v} does not fit an int")))
    }

    #[inline(always)]
    fn double(&mut self, field: &'static str) -> Result<f64, CodecError> {
        let Some((b, rest)) = self.rest.split_first_chunk::<8>() else {
            return Err(self.err(field, "record ends inside a double"));
        };
        self.rest = rest;
        Ok(f64::from_le_bytes(*b))
    }

    #[inline(always)]
    fn boolean(&mut self, field: &'static str) -> Result<bool, CodecError> {
        match self.rest.split_first() {
            Some((&b @ (0 | 1), rest)) => {
                self.rest = rest;
                Ok(b == 1)
            }
            Some((b, _)) => Err(self.err(field, format!("boolean byte is {b} (expected 0 or 1)"))),
            None => Err(self.err(field, "record ends before a boolean")),
        }
    }

    #[inline(always)]
    fn text(&mut self, field: &'static str) -> Result<Text, CodecError> {
        let n = self.long(field)?;
        let Some(n) = usize::try_from(n).ok().filter(|&n| n <= self.rest.len()) else {
            return Err(self.text_len_err(field, n));
        };
        let (s, rest) = self.rest.split_at(n);
        let s = std::str::from_utf8(s).map_err(|e| self.err(field, format!("not UTF-8: {e}")))?;
        self.rest = rest;
        Ok(Text::from(s))
    }

    #[cold]
    #[inline(never)]
    fn text_len_err(&self, field: &'static str, n: i64) -> CodecError {
        self.err(
            field,
            format!(
                "string length {n} outside the {} bytes left",
                self.rest.len()
            ),
        )
    }

    /// A `["null", T]` union: branch 0 is null, branch 1 the value.
    #[inline(always)]
    fn optional<T>(
        &mut self,
        field: &'static str,
        value: impl FnOnce(&mut Self, &'static str) -> Result<T, CodecError>,
    ) -> Result<Option<T>, CodecError> {
        match self.long(field)? {
            0 => Ok(None),
            1 => value(self, field).map(Some),
            b => Err(self.err(field, format!("union branch {b} (expected 0 or 1)"))),
        }
    }

    /// An enum index into `symbols`.
    #[inline(always)]
    fn symbol<T: Copy>(&mut self, field: &'static str, symbols: &[T]) -> Result<T, CodecError> {
        let i = self.long(field)?;
        usize::try_from(i)
            .ok()
            .and_then(|i| symbols.get(i).copied())
            .ok_or_else(|| {
                self.err(
                    field,
                    format!("enum index {i} outside 0..{}", symbols.len()),
                )
            })
    }

    fn end(self) -> Result<(), CodecError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Avro {
                schema: self.schema,
                message: format!("{} trailing bytes after the record", self.rest.len()),
            })
        }
    }
}

const MARKETS: [Market; 3] = [Market::Spot, Market::OnDemand, Market::Reserved];
const STATUSES: [JobStatus; 4] = [
    JobStatus::Succeeded,
    JobStatus::Failed,
    JobStatus::Preempted,
    JobStatus::Cancelled,
];

/// Read one whole datum of `schema` with `fields`; bytes left over are an error.
fn read<T>(
    bytes: &[u8],
    schema: &'static str,
    fields: impl FnOnce(&mut Datum) -> Result<T, CodecError>,
) -> Result<T, CodecError> {
    let mut d = Datum {
        rest: bytes,
        schema,
    };
    let v = fields(&mut d)?;
    d.end()?;
    Ok(v)
}

/// Decode a `JobSubmitted` datum (fields in `schemas/job_submitted.avsc` order).
pub(crate) fn job_submitted(bytes: &[u8]) -> Result<JobSubmitted, CodecError> {
    read(bytes, "JobSubmitted", |d| {
        Ok(JobSubmitted {
            job_id: d.text("job_id")?,
            submitted_at: d.long("submitted_at")?,
            compute_environment: d.text("compute_environment")?,
            job_type: d.text("job_type")?,
            project: d.text("project")?,
            user: d.text("user")?,
            priority: d.int("priority")?,
            vcpus: d.double("vcpus")?,
            memory_mib: d.long("memory_mib")?,
            gpus: d.int("gpus")?,
            estimated_runtime_s: d.optional("estimated_runtime_s", Datum::long)?,
            budget_usd: d.optional("budget_usd", Datum::double)?,
            deadline: d.optional("deadline", Datum::long)?,
            elasticity: d.boolean("elasticity")?,
        })
    })
}

/// Decode a `JobCompleted` datum (fields in `schemas/job_completed.avsc` order).
pub(crate) fn job_completed(bytes: &[u8]) -> Result<JobCompleted, CodecError> {
    read(bytes, "JobCompleted", |d| {
        Ok(JobCompleted {
            job_id: d.text("job_id")?,
            compute_environment: d.text("compute_environment")?,
            started_at: d.long("started_at")?,
            finished_at: d.long("finished_at")?,
            status: d.symbol("status", &STATUSES)?,
            instance_type: d.optional("instance_type", Datum::text)?,
            market: d.optional("market", |d, f| d.symbol(f, &MARKETS))?,
            region: d.optional("region", Datum::text)?,
            vcpu_seconds: d.double("vcpu_seconds")?,
            max_memory_mib: d.optional("max_memory_mib", Datum::long)?,
        })
    })
}

const SIGNAL_KINDS: [SpotSignalKind; 3] = [
    SpotSignalKind::InterruptionWarning,
    SpotSignalKind::RebalanceRecommendation,
    SpotSignalKind::CapacityUnavailable,
];

/// Decode a `SpotSignal` datum (fields in `schemas/spot_signal.avsc` order).
/// Not a hot record, but read the same way so its errors name the field.
pub(crate) fn spot_signal(bytes: &[u8]) -> Result<SpotSignal, CodecError> {
    read(bytes, "SpotSignal", |d| {
        Ok(SpotSignal {
            at: d.long("at")?,
            kind: d.symbol("kind", &SIGNAL_KINDS)?,
            region: d.text("region")?,
            zone: d.optional("zone", Datum::text)?,
            instance_type: d.text("instance_type")?,
            instance_id: d.optional("instance_id", Datum::text)?,
            count: d.int("count")?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::avro::{encode_event, schemas};
    use crate::events::Event;
    use apache_avro::Schema;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn text(r: &mut ChaCha8Rng) -> Text {
        const CHARS: &[char] = &['a', 'Z', '0', '-', '_', 'é', '日', '🚀'];
        let n = r.random_range(0..40);
        (0..n)
            .map(|_| CHARS[r.random_range(0..CHARS.len())])
            .collect()
    }

    fn long(r: &mut ChaCha8Rng) -> i64 {
        match r.random_range(0..4) {
            0 => r.random(),
            1 => i64::MIN + r.random_range(0..2),
            2 => i64::MAX - r.random_range(0..2),
            _ => r.random_range(-300..300),
        }
    }

    fn submitted(r: &mut ChaCha8Rng) -> JobSubmitted {
        JobSubmitted {
            job_id: text(r),
            submitted_at: long(r),
            compute_environment: text(r),
            job_type: text(r),
            project: text(r),
            user: text(r),
            priority: r.random(),
            vcpus: r.random::<f64>() * 1e3 - 10.0,
            memory_mib: long(r),
            gpus: r.random(),
            estimated_runtime_s: r.random_bool(0.5).then(|| long(r)),
            budget_usd: r.random_bool(0.5).then(|| r.random::<f64>()),
            deadline: r.random_bool(0.5).then(|| long(r)),
            elasticity: r.random(),
        }
    }

    fn completed(r: &mut ChaCha8Rng) -> JobCompleted {
        JobCompleted {
            job_id: text(r),
            compute_environment: text(r),
            started_at: long(r),
            finished_at: long(r),
            status: STATUSES[r.random_range(0..STATUSES.len())],
            instance_type: r.random_bool(0.5).then(|| text(r)),
            market: r
                .random_bool(0.5)
                .then(|| MARKETS[r.random_range(0..MARKETS.len())]),
            region: r.random_bool(0.5).then(|| text(r)),
            vcpu_seconds: r.random::<f64>() * 1e6,
            max_memory_mib: r.random_bool(0.5).then(|| long(r)),
        }
    }

    fn signal(r: &mut ChaCha8Rng) -> SpotSignal {
        SpotSignal {
            at: long(r),
            kind: SIGNAL_KINDS[r.random_range(0..SIGNAL_KINDS.len())],
            region: text(r),
            zone: r.random_bool(0.5).then(|| text(r)),
            instance_type: text(r),
            instance_id: r.random_bool(0.5).then(|| text(r)),
            count: r.random(),
        }
    }

    /// apache-avro's own (generic) reader: the reference this decoder must match.
    fn reference<T: serde::de::DeserializeOwned>(schema: &Schema, bytes: &[u8]) -> Option<T> {
        let mut r = bytes;
        let reader = apache_avro::reader::datum::GenericDatumReader::builder(schema)
            .build()
            .unwrap();
        let v = reader.read_value(&mut r).ok()?;
        if !r.is_empty() {
            return None;
        }
        apache_avro::from_value(&v).ok()
    }

    /// Every record decodes to what apache-avro reads; every truncation, and
    /// any trailing byte, is an error; random byte corruption never panics
    /// and is decoded or refused exactly as apache-avro decodes or refuses it.
    fn check<T>(
        schema: &Schema,
        make: fn(&mut ChaCha8Rng) -> T,
        wrap: fn(T) -> Event,
        decode: fn(&[u8]) -> Result<T, CodecError>,
    ) where
        T: Clone + PartialEq + std::fmt::Debug + serde::de::DeserializeOwned,
    {
        let mut r = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..2_000 {
            let v = make(&mut r);
            let bytes = encode_event(&wrap(v.clone())).unwrap();
            assert_eq!(decode(&bytes).unwrap(), v);
            assert_eq!(reference::<T>(schema, &bytes).unwrap(), v);
            for n in 0..bytes.len() {
                assert!(decode(&bytes[..n]).is_err(), "prefix of {n} bytes accepted");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode(&longer).is_err());
            for _ in 0..4 {
                let mut bad = bytes.clone();
                let i = r.random_range(0..bad.len());
                bad[i] = r.random();
                let ours = decode(&bad);
                let theirs = reference::<T>(schema, &bad);
                // NaN payloads compare unequal; compare their encodings.
                let same = match (&ours, &theirs) {
                    (Ok(a), Some(b)) => format!("{a:?}") == format!("{b:?}"),
                    (Err(_), None) => true,
                    // apache-avro reads a union cut off by the end of the
                    // datum as null (lenient, for appended fields); a
                    // truncated record is an error here.
                    (Err(e), Some(_)) => e.to_string().contains("record ends inside"),
                    (Ok(_), None) => false,
                };
                assert!(same, "{bad:?}: ours {ours:?}, apache-avro {theirs:?}");
            }
        }
    }

    #[test]
    fn job_submitted_matches_apache_avro() {
        check(
            &schemas().job_submitted,
            submitted,
            Event::JobSubmitted,
            job_submitted,
        );
    }

    #[test]
    fn job_completed_matches_apache_avro() {
        check(
            &schemas().job_completed,
            completed,
            Event::JobCompleted,
            job_completed,
        );
    }

    #[test]
    fn spot_signal_matches_apache_avro() {
        check(
            &schemas().spot_signal,
            signal,
            Event::SpotSignal,
            spot_signal,
        );
    }

    #[test]
    fn errors_name_the_record_and_field() {
        let mut r = ChaCha8Rng::seed_from_u64(1);
        let mut j = submitted(&mut r);
        j.job_id = "j-1".into();
        let bytes = encode_event(&Event::JobSubmitted(j)).unwrap();
        // Cut inside `submitted_at`, the field after the 4-byte job id.
        let e = job_submitted(&bytes[..5]).unwrap_err().to_string();
        assert!(e.starts_with("JobSubmitted: field `submitted_at`"), "{e}");
        let mut bad = bytes.clone();
        bad[1] = 0xff; // not UTF-8 inside job_id
        let e = job_submitted(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with("JobSubmitted: field `job_id`: not UTF-8"),
            "{e}"
        );
    }
}
