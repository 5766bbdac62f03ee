//! Responses whose body is streamed: a file from disk (a backup) or bytes made as they are sent
//! (a session's recording), either of which can be far larger than memory. warp's bodies cannot
//! stream, so a handler answers with an empty response carrying a [`FileDownload`] or a
//! [`StreamedBody`] extension, and the edge (`edge.rs`) swaps in a [`ResponseBody::File`] that
//! reads the file in chunks as the client takes them, or a [`ResponseBody::Stream`] that polls
//! the stream for its next bytes only when the connection has room for them.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bytes made as they are sent; an error ends the response abruptly (the client sees a cut
/// body, never a complete-looking one).
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// A stream to send as a response's body, taken out by the edge (a response's extensions must
/// be cloneable and shareable, hence the lock around the one stream).
#[derive(Clone)]
pub struct StreamedBody(Arc<Mutex<Option<ByteStream>>>);

impl StreamedBody {
    pub fn new(stream: ByteStream) -> Self {
        Self(Arc::new(Mutex::new(Some(stream))))
    }

    fn take(&self) -> Option<ByteStream> {
        self.0.lock().ok().and_then(|mut s| s.take())
    }
}

/// How much of the file one frame carries.
const CHUNK: usize = 256 * 1024;

/// A file to send as a response's body. The file is removed when the last handle to it is
/// dropped: once the edge has opened it (the open descriptor keeps the bytes readable), or when
/// the response is dropped unsent.
#[derive(Clone)]
pub struct FileDownload(Arc<TemporaryFile>);

struct TemporaryFile {
    path: PathBuf,
    len: u64,
}

impl Drop for TemporaryFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl FileDownload {
    /// `path`, `len` bytes long, removed once it is sent or abandoned.
    pub fn temporary(path: PathBuf, len: u64) -> Self {
        Self(Arc::new(TemporaryFile { path, len }))
    }
}

/// The body of every response the edge sends: what the routes built, a file or a stream.
pub enum ResponseBody<B> {
    Routed(B),
    File(FileBody),
    Stream(ByteStream),
}

/// A file, read in [`CHUNK`]s.
pub struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buffer: Vec<u8>,
}

/// Turns a response of the routes into the edge's, opening the file of a [`FileDownload`] or
/// taking the stream of a [`StreamedBody`].
pub async fn finish<B: From<&'static str>>(
    mut response: hyper::Response<B>,
) -> hyper::Response<ResponseBody<B>> {
    if let Some(streamed) = response.extensions_mut().remove::<StreamedBody>()
        && let Some(stream) = streamed.take()
    {
        let (parts, _) = response.into_parts();
        return hyper::Response::from_parts(parts, ResponseBody::Stream(stream));
    }
    let Some(FileDownload(file)) = response.extensions_mut().remove::<FileDownload>() else {
        return response.map(ResponseBody::Routed);
    };
    match tokio::fs::File::open(&file.path).await {
        Ok(opened) => {
            let body = FileBody {
                file: opened,
                remaining: file.len,
                buffer: vec![0; CHUNK],
            };
            // Unlinked now if this was the last handle; the descriptor keeps it readable.
            drop(file);
            let (parts, _) = response.into_parts();
            hyper::Response::from_parts(parts, ResponseBody::File(body))
        }
        Err(e) => {
            tracing::error!(error = %e, "a prepared download could not be opened");
            let mut failed = hyper::Response::new(B::from("the file could not be read\n"));
            *failed.status_mut() = warp::http::StatusCode::INTERNAL_SERVER_ERROR;
            failed.map(ResponseBody::Routed)
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Routed(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(Into::into))),
            ResponseBody::File(file) => file.poll_chunk(cx),
            ResponseBody::Stream(stream) => stream
                .as_mut()
                .poll_next(cx)
                .map(|next| next.map(|bytes| bytes.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Routed(body) => body.is_end_stream(),
            ResponseBody::File(file) => file.remaining == 0,
            ResponseBody::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Routed(body) => body.size_hint(),
            ResponseBody::File(file) => SizeHint::with_exact(file.remaining),
            ResponseBody::Stream(_) => SizeHint::default(),
        }
    }
}

impl FileBody {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(self.remaining).unwrap_or(CHUNK).min(CHUNK);
        let mut buf = ReadBuf::new(&mut self.buffer[..want]);
        match Pin::new(&mut self.file).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Ok(())) => {
                let read = buf.filled();
                if read.is_empty() {
                    return Poll::Ready(Some(Err("the file ended before its length".into())));
                }
                self.remaining -= read.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(read)))))
            }
        }
    }
}
