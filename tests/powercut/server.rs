//! A small keep-alive HTTP client for the in-process server
//! ([`crate::common::in_process`]).

use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub use crate::common::in_process::Server;
use crate::common::{Response, try_read_response};

/// One kept-alive connection, reopened after a failure.
pub struct Client {
    addr: SocketAddr,
    stream: Option<TcpStream>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, stream: None }
    }

    /// POSTs a webhook body.
    pub fn post(&mut self, body: &str) -> io::Result<Response> {
        let request = format!(
            "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.exchange(request.as_bytes())
    }

    /// GETs a path.
    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        self.exchange(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
    }

    fn exchange(&mut self, request: &[u8]) -> io::Result<Response> {
        let result = self.try_exchange(request);
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn try_exchange(&mut self, request: &[u8]) -> io::Result<Response> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr)?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            stream.set_write_timeout(Some(Duration::from_secs(30)))?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected");
        stream.write_all(request)?;
        let response = try_read_response(stream)?;
        if response
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            self.stream = None;
        }
        Ok(response)
    }
}
