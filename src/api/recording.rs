//! `GET /api/v1/sessions/{sessionId}/recording`: a session's output and timeline as an
//! asciicast v2 file, streamed. The store is read a page at a time as the client takes the
//! lines (the edge polls the stream only when the connection has room), so a session of any
//! size is sent with the memory of one page.

use std::collections::VecDeque;

use bytes::Bytes;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use super::download::{ByteStream, StreamedBody};
use super::wire::asciicast::{CONTENT_TYPE, CastWriter};
use crate::sessions::{RecordingItem, RecordingReader, RecordingStart};

/// Bytes of lines gathered into one frame of the body.
const FRAME_BYTES: usize = 256 * 1024;

/// The `200` answer whose body streams the recording.
pub fn response(start: &RecordingStart, reader: RecordingReader) -> Response {
    let mut response = Response::new(Default::default());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "inline; filename=\"session-{}.cast\"",
        start.session.id
    )) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    response
        .extensions_mut()
        .insert(StreamedBody::new(lines(start, reader)));
    response
}

/// What the stream holds between two frames: the reader, the entries of its last page not
/// written yet, and the time of the last line.
struct Cast {
    reader: RecordingReader,
    pending: VecDeque<RecordingItem>,
    writer: CastWriter,
    header: Vec<u8>,
    done: bool,
}

/// The header, then every line, in frames of about [`FRAME_BYTES`].
fn lines(start: &RecordingStart, reader: RecordingReader) -> ByteStream {
    let mut header = Vec::new();
    let writer = CastWriter::new(start, &mut header);
    let cast = Cast {
        reader,
        pending: VecDeque::new(),
        writer,
        header,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(cast, |mut cast| async move {
        if cast.done {
            return None;
        }
        let mut out = std::mem::take(&mut cast.header);
        while out.len() < FRAME_BYTES {
            if let Some(item) = cast.pending.pop_front() {
                cast.writer.write(&item, &mut out);
                continue;
            }
            match cast.reader.next_page().await {
                Ok(page) if page.is_empty() => {
                    cast.done = true;
                    break;
                }
                Ok(page) => cast.pending = page.into(),
                Err(e) => {
                    tracing::warn!(error = %e, "a recording could not be read to its end");
                    cast.done = true;
                    return Some((Err(e.to_string().into()), cast));
                }
            }
        }
        if out.is_empty() {
            return None;
        }
        Some((Ok(Bytes::from(out)), cast))
    }))
}
