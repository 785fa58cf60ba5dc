//! A user-mode network for embassy-net on the host: libslirp, the user
//! networking of QEMU, behind an embassy-net [`Driver`]. The device gets an
//! Ethernet link to a virtual 10.0.2.0/24 with DHCP (it is given
//! 10.0.2.15), and TCP to 10.0.2.2:PORT reaches the host's 127.0.0.1:PORT:
//! the runner's proxy on loopback, with no root, no TAP device and no
//! network namespace.
//!
//! The link can be unplugged ([`Link::set_up`]): what `!wifi off` does to
//! the ESP32-C3's station interface, through the same `Radio` interface, so
//! the application's code path is the one that ships.
//!
//! One thread owns the slirp context (it is not `Send`) and runs its poll
//! loop; frames cross to and from the driver through two queues, and a
//! socket pair wakes the loop when the device sends.
//!
//! Why by hand: no crate bridges libslirp to embassy-net. The `libslirp`
//! crate gives the context and its callbacks; this is the glue.

use embassy_net_driver::{Capabilities, Driver, HardwareAddress, LinkState};
use libslirp::{Context, Handler, PollEvents};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Instant;

/// The host as the device sees it: 10.0.2.2:PORT is 127.0.0.1:PORT.
pub const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The address DHCP gives the device.
pub const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// Frames queued towards the device at most; beyond, the oldest is
/// dropped, as a NIC's ring overflows (bounded memory).
const QUEUE: usize = 256;
/// An Ethernet frame without its FCS.
const MTU: usize = 1514;

#[derive(Default)]
struct Shared {
    to_device: Mutex<VecDeque<Vec<u8>>>,
    to_slirp: Mutex<VecDeque<Vec<u8>>>,
    rx_waker: Mutex<Option<Waker>>,
    link_waker: Mutex<Option<Waker>>,
    up: AtomicBool,
    stop: AtomicBool,
}

impl Shared {
    fn wake(slot: &Mutex<Option<Waker>>) {
        if let Some(w) = slot.lock().unwrap().take() {
            w.wake();
        }
    }
}

/// The device side: an embassy-net driver.
pub struct Device {
    shared: Arc<Shared>,
    wake: UnixStream,
    mac: [u8; 6],
}

/// The switch and the slirp thread; dropping it stops the network.
pub struct Link {
    shared: Arc<Shared>,
    wake: UnixStream,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Link {
    /// Plugs the link in (`true`) or pulls it out: frames queued either
    /// way are lost, as they are when a radio goes off.
    pub fn set_up(&self, up: bool) {
        if !up {
            self.shared.to_device.lock().unwrap().clear();
            self.shared.to_slirp.lock().unwrap().clear();
        }
        self.shared.up.store(up, Ordering::SeqCst);
        Shared::wake(&self.shared.link_waker);
        Shared::wake(&self.shared.rx_waker);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = (&self.wake).write_all(&[0]);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the network: a device with `mac`, its link up.
pub fn start(mac: [u8; 6]) -> std::io::Result<(Device, Link)> {
    let shared = Arc::new(Shared::default());
    shared.up.store(true, Ordering::SeqCst);
    let (loop_side, device_side) = UnixStream::pair()?;
    loop_side.set_nonblocking(true)?;
    let link_wake = device_side.try_clone()?;
    let s = shared.clone();
    let thread = std::thread::Builder::new()
        .name("hil-slirp".into())
        .spawn(move || run(s, loop_side))?;
    Ok((
        Device {
            shared: shared.clone(),
            wake: device_side,
            mac,
        },
        Link {
            shared,
            wake: link_wake,
            thread: Some(thread),
        },
    ))
}

/// A slirp timer's callback, shared so it can be called outside a borrow.
type Callback = Rc<RefCell<Box<dyn FnMut()>>>;

/// A slirp timer: its callback and when it is due (ms on our clock).
struct Timer {
    func: Callback,
    due: Option<i64>,
}

struct Slirp {
    start: Instant,
    shared: Arc<Shared>,
    timers: Vec<Option<Timer>>,
}

impl Slirp {
    fn now_ms(&self) -> i64 {
        self.start.elapsed().as_millis() as i64
    }
}

impl Handler for Slirp {
    type Timer = usize;

    fn clock_get_ns(&mut self) -> i64 {
        self.start.elapsed().as_nanos() as i64
    }

    fn send_packet(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.shared.up.load(Ordering::SeqCst) {
            let mut q = self.shared.to_device.lock().unwrap();
            if q.len() >= QUEUE {
                q.pop_front();
            }
            q.push_back(buf.to_vec());
            drop(q);
            Shared::wake(&self.shared.rx_waker);
        }
        Ok(buf.len())
    }

    fn register_poll_fd(&mut self, _fd: RawFd) {}
    fn unregister_poll_fd(&mut self, _fd: RawFd) {}

    fn guest_error(&mut self, msg: &str) {
        eprintln!("hil-slirp: the device sent something slirp rejects: {msg}");
    }

    fn notify(&mut self) {}

    fn timer_new(&mut self, func: Box<dyn FnMut()>) -> Box<usize> {
        let t = Timer {
            func: Rc::new(RefCell::new(func)),
            due: None,
        };
        let id = match self.timers.iter().position(Option::is_none) {
            Some(i) => {
                self.timers[i] = Some(t);
                i
            }
            None => {
                self.timers.push(Some(t));
                self.timers.len() - 1
            }
        };
        Box::new(id)
    }

    // libslirp gives the expiry in ms of the clock it reads (ours).
    fn timer_mod(&mut self, timer: &mut Box<usize>, expire_time: i64) {
        if let Some(Some(t)) = self.timers.get_mut(**timer) {
            t.due = Some(expire_time);
        }
    }

    fn timer_free(&mut self, timer: Box<usize>) {
        if let Some(slot) = self.timers.get_mut(*timer) {
            *slot = None;
        }
    }
}

fn to_poll(e: PollEvents) -> libc::c_short {
    let mut out = 0;
    if e.has_in() {
        out |= libc::POLLIN;
    }
    if e.has_out() {
        out |= libc::POLLOUT;
    }
    if e.has_pri() {
        out |= libc::POLLPRI;
    }
    out
}

fn from_poll(r: libc::c_short) -> PollEvents {
    let mut e = PollEvents::empty();
    if r & libc::POLLIN != 0 {
        e |= PollEvents::poll_in();
    }
    if r & libc::POLLOUT != 0 {
        e |= PollEvents::poll_out();
    }
    if r & libc::POLLPRI != 0 {
        e |= PollEvents::poll_pri();
    }
    if r & libc::POLLERR != 0 {
        e |= PollEvents::poll_err();
    }
    if r & libc::POLLHUP != 0 {
        e |= PollEvents::poll_hup();
    }
    e
}

fn run(shared: Arc<Shared>, mut wake: UnixStream) {
    let handler = Rc::new(RefCell::new(Slirp {
        start: Instant::now(),
        shared: shared.clone(),
        timers: Vec::new(),
    }));
    let ctx = Context::new(
        false,
        true,
        Ipv4Addr::new(10, 0, 2, 0),
        Ipv4Addr::new(255, 255, 255, 0),
        HOST,
        false,
        Ipv6Addr::UNSPECIFIED,
        0,
        Ipv6Addr::UNSPECIFIED,
        None,
        None,
        None,
        None,
        GUEST,
        Ipv4Addr::new(10, 0, 2, 3),
        Ipv6Addr::UNSPECIFIED,
        Vec::new(),
        None,
        handler.clone(),
    );
    let mut drain = [0u8; 64];
    while !shared.stop.load(Ordering::SeqCst) {
        // The device's frames, in order.
        let frames: Vec<Vec<u8>> = shared.to_slirp.lock().unwrap().drain(..).collect();
        for f in frames {
            ctx.input(&f);
        }
        // Wait for a socket, the device, or the next timer (1 s at most).
        let mut timeout: u32 = 1000;
        let mut fds = vec![libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        ctx.pollfds_fill(&mut timeout, |fd, events| {
            fds.push(libc::pollfd {
                fd,
                events: to_poll(events),
                revents: 0,
            });
            (fds.len() - 1) as i32
        });
        let now = handler.borrow().now_ms();
        if let Some(next) = handler
            .borrow()
            .timers
            .iter()
            .flatten()
            .filter_map(|t| t.due)
            .min()
        {
            timeout = timeout.min((next - now).clamp(0, 1000) as u32);
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd entries.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout as i32) };
        if fds[0].revents & libc::POLLIN != 0 {
            while matches!(wake.read(&mut drain), Ok(k) if k > 0) {}
        }
        ctx.pollfds_poll(n < 0, |idx| {
            fds.get(idx as usize)
                .map_or(PollEvents::empty(), |p| from_poll(p.revents))
        });
        // Due timers fire outside any borrow: their callbacks call back in.
        let now = handler.borrow().now_ms();
        let due: Vec<Callback> = handler
            .borrow_mut()
            .timers
            .iter_mut()
            .flatten()
            .filter(|t| t.due.is_some_and(|d| d <= now))
            .map(|t| {
                t.due = None;
                t.func.clone()
            })
            .collect();
        for f in due {
            (f.borrow_mut())();
        }
    }
}

pub struct RxToken(Vec<u8>);
pub struct TxToken<'a>(&'a Device);

impl embassy_net_driver::RxToken for RxToken {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(mut self, f: F) -> R {
        f(&mut self.0)
    }
}

impl embassy_net_driver::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        let shared = &self.0.shared;
        if shared.up.load(Ordering::SeqCst) {
            shared.to_slirp.lock().unwrap().push_back(frame);
            let _ = (&self.0.wake).write_all(&[0]);
        }
        r
    }
}

impl Driver for Device {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, cx: &mut std::task::Context) -> Option<(RxToken, TxToken<'_>)> {
        *self.shared.rx_waker.lock().unwrap() = Some(cx.waker().clone());
        let frame = self.shared.to_device.lock().unwrap().pop_front()?;
        Some((RxToken(frame), TxToken(self)))
    }

    fn transmit(&mut self, _cx: &mut std::task::Context) -> Option<TxToken<'_>> {
        Some(TxToken(self))
    }

    fn link_state(&mut self, cx: &mut std::task::Context) -> LinkState {
        *self.shared.link_waker.lock().unwrap() = Some(cx.waker().clone());
        if self.shared.up.load(Ordering::SeqCst) {
            LinkState::Up
        } else {
            LinkState::Down
        }
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::default();
        c.max_transmission_unit = MTU;
        c
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ethernet(self.mac)
    }
}
