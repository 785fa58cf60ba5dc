//! The device's one connection to the broker: its TCP socket, and (feature
//! `tls`) the TLS session over it. The main loop sees only bytes in and
//! out, and why a connection could not be made or ended.

use alloc::format;
use alloc::string::String;
use core::cell::RefCell;
use embassy_net::tcp::TcpSocket;
use embassy_net::IpEndpoint;
use embassy_time::Duration;
use embedded_io_async::Write;

/// The one TCP socket, shared by the main loop (connect, abort, close)
/// and the TLS session that reads and writes through it.
///
/// A `RefCell` borrow is held across a read or write: both run only inside
/// the main loop's own awaits, one at a time (a read pending in its select
/// is dropped before the loop touches the socket again), so a borrow never
/// meets another.
#[derive(Clone, Copy)]
#[cfg(feature = "tls")]
pub struct Sock(pub &'static RefCell<TcpSocket<'static>>);

#[cfg(feature = "tls")]
impl Sock {
    /// The socket. One call site for the borrow (which panics only if the
    /// invariant above is broken), so one panic location in the image.
    #[inline(never)]
    fn get(&self) -> core::cell::RefMut<'static, TcpSocket<'static>> {
        self.0.borrow_mut()
    }
}

#[cfg(feature = "tls")]
impl embedded_io_async::ErrorType for Sock {
    type Error = embassy_net::tcp::Error;
}

#[cfg(feature = "tls")]
impl embedded_io_async::Read for Sock {
    #[allow(clippy::await_holding_refcell_ref)]
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.get().read(buf).await
    }
}

#[cfg(feature = "tls")]
impl embedded_io_async::Write for Sock {
    #[allow(clippy::await_holding_refcell_ref)]
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.get().write(buf).await
    }

    #[allow(clippy::await_holding_refcell_ref)]
    async fn flush(&mut self) -> Result<(), Self::Error> {
        self.get().flush().await
    }
}

/// Without TLS nothing else holds the socket: the link owns it outright
/// (a `RefCell` and its checks would cost the plaintext image ~1 KB).
#[cfg(not(feature = "tls"))]
type Held = &'static mut TcpSocket<'static>;
#[cfg(feature = "tls")]
type Held = Sock;
#[cfg(not(feature = "tls"))]
type Guard<'a> = &'a mut TcpSocket<'static>;
#[cfg(feature = "tls")]
type Guard<'a> = core::cell::RefMut<'static, TcpSocket<'static>>;

pub struct Link {
    sock: Held,
    #[cfg(feature = "tls")]
    tls: crate::tls::TlsLink,
}

impl Link {
    pub fn new(socket: &'static mut RefCell<TcpSocket<'static>>) -> Link {
        Link {
            #[cfg(not(feature = "tls"))]
            sock: socket.get_mut(),
            #[cfg(feature = "tls")]
            sock: Sock(socket),
            #[cfg(feature = "tls")]
            tls: crate::tls::TlsLink::new(),
        }
    }

    fn socket(&mut self) -> Guard<'_> {
        #[cfg(not(feature = "tls"))]
        return &mut *self.sock;
        #[cfg(feature = "tls")]
        return self.sock.get();
    }

    /// A TCP connection to `ep`, within 5 s; `timeout` bounds silence on it.
    #[allow(clippy::await_holding_refcell_ref)]
    pub async fn connect(&mut self, ep: IpEndpoint, timeout: Duration) -> Result<(), String> {
        self.socket().abort();
        self.socket().set_timeout(Some(timeout));
        match embassy_time::with_timeout(Duration::from_secs(5), self.socket().connect(ep)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{e:?}")),
            Err(_) => Err("connect timed out".into()),
        }
    }

    /// TLS over the connected socket; on failure the TCP connection is reset.
    #[cfg(feature = "tls")]
    pub async fn handshake(
        &mut self,
        ca: &[u8],
        name: &str,
        client: Option<crate::tls::Identity<'_>>,
        rng: &mut impl embedded_tls::CryptoRngCore,
    ) -> Result<(), String> {
        match self.tls.open(self.sock, ca, name, client, rng).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.socket().abort();
                Err(format!("tls: {e:?}"))
            }
        }
    }

    #[allow(clippy::await_holding_refcell_ref)]
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), String> {
        #[cfg(feature = "tls")]
        if self.tls.is_open() {
            return self
                .tls
                .write_all(bytes)
                .await
                .map_err(|e| format!("tls: {e:?}"));
        }
        self.socket()
            .write_all(bytes)
            .await
            .map_err(|e| format!("{e:?}"))
    }

    /// Bytes from the broker (0: it closed the connection).
    #[allow(clippy::await_holding_refcell_ref)]
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, String> {
        #[cfg(feature = "tls")]
        if self.tls.is_open() {
            return match self.tls.read(buf).await {
                Ok(n) => Ok(n),
                Err(embedded_tls::TlsError::ConnectionClosed) => Ok(0),
                Err(e) => Err(format!("tls: {e:?}")),
            };
        }
        self.socket().read(buf).await.map_err(|e| format!("{e:?}"))
    }

    /// Ends the connection: a reset (`abrupt`), or a close (with TLS's
    /// close_notify first).
    pub async fn close(&mut self, abrupt: bool) {
        #[cfg(feature = "tls")]
        self.tls.close(!abrupt).await;
        if abrupt {
            self.socket().abort();
        } else {
            self.socket().close();
        }
    }
}
