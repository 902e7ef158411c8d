//! The CUDA device: one context, its streams (one by default; [`Device::with_streams`] for a
//! multi-stream plan) with one of them current, an event pool, the loaded kernel modules, and
//! the arena allocator; plus [`DeviceBuf`], the one way launchers see device memory (cudarc
//! slices, views, arena buffers, or a [`RawBuf`] inside memory the caller owns), and plain
//! host ↔ device copies.
//!
//! Launchers enqueue on [`Device::stream`], the current stream; an executor selects a plan
//! node's stream with [`Device::select`] before launching it, and orders streams with events.
//!
//! Not here: the plan's event schedule (the engine's `cuda_exec.rs`), pinned host memory, CUDA
//! graphs (later work).

use super::nvrtc::{self, CudaSource};
use super::{driver_err, no_panic, CudaError};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, CudaViewMut,
    DevicePtr, DeviceRepr,
};
use std::cell::Cell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The oldest driver the `cuda-13000` bindings can call: older drivers lack `_v2`/`_v3` entry
/// points those bindings resolve, and cudarc would panic on the first one.
const MIN_DRIVER_VERSION: i32 = 13000;

/// A CUDA device ready to run flowseg's kernels.
pub struct Device {
    ctx: Arc<CudaContext>,
    /// At least one; launchers use `streams[current]`.
    streams: Vec<Arc<CudaStream>>,
    current: AtomicUsize,
    arch: String,
    name: String,
    events: EventPool,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("ordinal", &self.ctx.ordinal())
            .field("name", &self.name)
            .field("arch", &self.arch)
            .finish()
    }
}

impl Device {
    /// Opens GPU `ordinal`. Never panics: no libcuda gives [`CudaError::NoDriver`] ("no CUDA
    /// driver found (libcuda.so): …"); a driver older than CUDA 13, no device or a bad ordinal
    /// gives [`CudaError::NoDevice`].
    pub fn cuda(ordinal: usize) -> Result<Device, CudaError> {
        // SAFETY: a dlopen probe over cudarc's candidate names; nothing in the library is called.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::NoDriver(format!(
                "none of {:?} could be loaded; install the NVIDIA driver or put the directory \
                 holding libcuda.so.1 on LD_LIBRARY_PATH",
                cudarc::get_lib_name_candidates("cuda")
            )));
        }
        no_panic(|| Self::open(ordinal), CudaError::NoDriver)
    }

    fn open(ordinal: usize) -> Result<Device, CudaError> {
        let no_device = |what: &str, e: cudarc::driver::DriverError| {
            CudaError::NoDevice(format!("{what}: {e:?}"))
        };
        cudarc::driver::result::init().map_err(|e| no_device("cuInit", e))?;
        let mut version = 0;
        // SAFETY: the driver is loaded and initialised; `version` is a valid out pointer.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }
            .result()
            .map_err(|e| no_device("cuDriverGetVersion", e))?;
        if version < MIN_DRIVER_VERSION {
            return Err(CudaError::NoDevice(format!(
                "the driver supports CUDA {}.{}; flowseg needs CUDA 13.0 (driver 580 or newer)",
                version / 1000,
                version % 1000 / 10
            )));
        }
        let count = CudaContext::device_count().map_err(|e| no_device("cuDeviceGetCount", e))?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::NoDevice(format!(
                "device {ordinal} requested, {count} present"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| no_device("cuCtxCreate", e))?;
        // SAFETY: nothing has been allocated on this context by us yet; turning tracking off
        // before the first allocation is the documented safe point (DESIGN.md §4).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver_err("cuStreamCreate"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver_err("cuDeviceGetAttribute"))?;
        let name = ctx.name().map_err(driver_err("cuDeviceGetName"))?;
        Ok(Device {
            events: EventPool::new(ctx.clone()),
            ctx,
            streams: vec![stream],
            current: AtomicUsize::new(0),
            arch: format!("sm_{major}{minor}"),
            name,
            modules: Mutex::default(),
            functions: Mutex::default(),
        })
    }

    /// The cudarc context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// [`Device::cuda`] with `streams` streams (at least one), stream 0 current.
    pub fn with_streams(ordinal: usize, streams: usize) -> Result<Device, CudaError> {
        let mut dev = Self::cuda(ordinal)?;
        while dev.streams.len() < streams {
            let s = dev.ctx.new_stream().map_err(driver_err("cuStreamCreate"))?;
            dev.streams.push(s);
        }
        Ok(dev)
    }

    /// The stream every launcher enqueues on: the current one.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.streams[self.current.load(Ordering::Relaxed)]
    }

    /// Stream `i` (of [`Device::streams`]).
    pub fn stream_at(&self, i: usize) -> Option<&Arc<CudaStream>> {
        self.streams.get(i)
    }

    /// How many streams the device has.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Makes stream `i` current: later launches enqueue there.
    pub fn select(&self, i: usize) -> Result<(), CudaError> {
        if i >= self.streams.len() {
            return Err(CudaError::NoDevice(format!(
                "stream {i} selected, the device has {}",
                self.streams.len()
            )));
        }
        self.current.store(i, Ordering::Relaxed);
        Ok(())
    }

    /// Copies `src` into `dst` on the current stream and waits for it (`src` is pageable host
    /// memory that the caller may reuse at once).
    pub fn upload_into<T: DeviceRepr>(
        &self,
        src: &[T],
        dst: &mut (impl DeviceBufMut<T> + ?Sized),
    ) -> Result<(), CudaError> {
        if src.len() != dst.elems() {
            return Err(CudaError::Driver {
                call: "cuMemcpyHtoD",
                error: format!(
                    "{} host elements into a {}-element buffer",
                    src.len(),
                    dst.elems()
                ),
            });
        }
        if src.is_empty() {
            return Ok(());
        }
        let s = self.stream();
        let dst = dst.device_addr(s);
        // SAFETY: `dst` holds `src.len()` elements of `T` (checked above), and the copy
        // completes before `src` is released (the stream is synchronised below).
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, s.cu_stream()) }
            .map_err(driver_err("cuMemcpyHtoDAsync"))?;
        s.synchronize().map_err(driver_err("cuStreamSynchronize"))
    }

    /// Copies `src` into `dst` on the current stream, after everything queued there, and waits.
    pub fn download_into<T: DeviceRepr>(
        &self,
        src: &(impl DeviceBuf<T> + ?Sized),
        dst: &mut [T],
    ) -> Result<(), CudaError> {
        if dst.len() != src.elems() {
            return Err(CudaError::Driver {
                call: "cuMemcpyDtoH",
                error: format!(
                    "a {}-element buffer into {} host elements",
                    src.elems(),
                    dst.len()
                ),
            });
        }
        if dst.is_empty() {
            return Ok(());
        }
        let s = self.stream();
        let src = src.device_addr(s);
        // SAFETY: `src` holds `dst.len()` elements of `T` (checked above); `dst` outlives the
        // copy, which the synchronisation below completes.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, src, s.cu_stream()) }
            .map_err(driver_err("cuMemcpyDtoHAsync"))?;
        s.synchronize().map_err(driver_err("cuStreamSynchronize"))
    }

    /// Copies `src` into `dst` (same length) on the current stream, without waiting.
    pub fn copy<T: DeviceRepr>(
        &self,
        src: &(impl DeviceBuf<T> + ?Sized),
        dst: &mut (impl DeviceBufMut<T> + ?Sized),
    ) -> Result<(), CudaError> {
        if src.elems() != dst.elems() {
            return Err(CudaError::Driver {
                call: "cuMemcpyDtoD",
                error: format!("{} elements into {}", src.elems(), dst.elems()),
            });
        }
        if src.elems() == 0 {
            return Ok(());
        }
        let s = self.stream();
        let bytes = src.elems() * std::mem::size_of::<T>();
        let (from, to) = (src.device_addr(s), dst.device_addr(s));
        // SAFETY: both hold `elems` elements of `T` (checked above); the copy is ordered on the
        // current stream after the work that wrote `src`.
        unsafe { cudarc::driver::result::memcpy_dtod_async(to, from, bytes, s.cu_stream()) }
            .map_err(driver_err("cuMemcpyDtoDAsync"))
    }

    /// Sets every element of `dst` (4-byte words: f32 or i32) to `bits` on the current stream.
    pub fn fill32<T: DeviceRepr>(
        &self,
        dst: &mut (impl DeviceBufMut<T> + ?Sized),
        bits: u32,
    ) -> Result<(), CudaError> {
        if std::mem::size_of::<T>() != 4 {
            return Err(CudaError::Driver {
                call: "cuMemsetD32Async",
                error: format!("{}-byte elements", std::mem::size_of::<T>()),
            });
        }
        if dst.elems() == 0 {
            return Ok(());
        }
        let s = self.stream();
        let to = dst.device_addr(s);
        // SAFETY: `dst` holds `elems` 4-byte words; the memset is ordered on the current stream.
        unsafe { cudarc::driver::sys::cuMemsetD32Async(to, bits, dst.elems(), s.cu_stream()) }
            .result()
            .map_err(driver_err("cuMemsetD32Async"))
    }

    /// Sets every element of `dst` to zero (0.0 for f32, 0 for i32) on the current stream.
    pub fn zero<T: DeviceRepr>(
        &self,
        dst: &mut (impl DeviceBufMut<T> + ?Sized),
    ) -> Result<(), CudaError> {
        self.fill32(dst, 0)
    }

    /// `bytes` of zeroed device memory on stream 0 (an executor's arena or a state tensor).
    pub fn alloc_bytes(&self, bytes: usize) -> Result<CudaSlice<u8>, CudaError> {
        self.streams[0]
            .alloc_zeros::<u8>(bytes.max(1))
            .map_err(driver_err("cuMemAlloc"))
    }

    /// NVRTC target of this device, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The device's name, e.g. `NVIDIA H100 80GB HBM3`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The event pool.
    pub fn events(&self) -> &EventPool {
        &self.events
    }

    /// Waits for all work on every stream.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        for s in &self.streams {
            s.synchronize().map_err(driver_err("cuStreamSynchronize"))?;
        }
        Ok(())
    }

    /// Compiles (through the CUBIN cache) and loads `sources` now, so that errors surface at
    /// plan time rather than at the first launch.
    pub fn load(&self, sources: &[&'static CudaSource]) -> Result<(), CudaError> {
        for s in sources {
            self.module(s)?;
        }
        Ok(())
    }

    fn module(&self, source: &'static CudaSource) -> Result<Arc<CudaModule>, CudaError> {
        let mut modules = self.modules.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = modules.get(source.name) {
            return Ok(m.clone());
        }
        let cubin = nvrtc::compile(source, &self.arch)?;
        let module = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
            .map_err(driver_err("cuModuleLoadData"))?;
        modules.insert(source.name, module.clone());
        Ok(module)
    }

    /// Kernel `kernel` of `source`, compiling and loading the module on first use.
    pub fn function(
        &self,
        source: &'static CudaSource,
        kernel: &'static str,
    ) -> Result<CudaFunction, CudaError> {
        let key = (source.name, kernel);
        if let Some(f) = self
            .functions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(f.clone());
        }
        let f = self
            .module(source)?
            .load_function(kernel)
            .map_err(driver_err("cuModuleGetFunction"))?;
        self.functions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, f.clone());
        Ok(f)
    }

    /// A new arena of `bytes` bytes (one device allocation, zeroed).
    pub fn arena(&self, bytes: usize) -> Result<Arena, CudaError> {
        let mem = self.alloc_bytes(bytes)?;
        let base = {
            let (ptr, _no_sync) = mem.device_ptr(&self.streams[0]);
            ptr
        };
        Ok(Arena {
            mem,
            base,
            top: Cell::new(0),
        })
    }
}

/// Reusable events (timing disabled), so that a plan recording events every step allocates none.
pub struct EventPool {
    ctx: Arc<CudaContext>,
    free: Mutex<Vec<CudaEvent>>,
}

impl EventPool {
    fn new(ctx: Arc<CudaContext>) -> Self {
        EventPool {
            ctx,
            free: Mutex::default(),
        }
    }

    /// An event from the pool, or a new one when the pool is empty.
    pub fn take(&self) -> Result<CudaEvent, CudaError> {
        let reused = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match reused {
            Some(e) => Ok(e),
            None => self
                .ctx
                .new_event(None)
                .map_err(driver_err("cuEventCreate")),
        }
    }

    /// Returns an event to the pool.
    pub fn give(&self, event: CudaEvent) {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
    }

    /// Events waiting for reuse.
    pub fn idle(&self) -> usize {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Alignment of every arena buffer: enough for any vector load and the driver's own allocations.
const ARENA_ALIGN: usize = 256;

/// One device allocation handed out by bumping an offset; [`Arena::reset`] frees everything at
/// once (per step). Buffers borrow the arena, so it cannot be reset or dropped while one lives.
pub struct Arena {
    mem: CudaSlice<u8>,
    base: u64,
    top: Cell<usize>,
}

impl Arena {
    /// A buffer of `len` elements of `T` (contents are whatever was there: not zeroed).
    pub fn alloc<T: DeviceRepr>(&self, len: usize) -> Result<ArenaBuf<'_, T>, CudaError> {
        let bytes = len * std::mem::size_of::<T>();
        let start = self.top.get().next_multiple_of(ARENA_ALIGN);
        let capacity = self.mem.len();
        if start + bytes > capacity {
            return Err(CudaError::ArenaFull {
                requested: bytes,
                free: capacity.saturating_sub(start),
                capacity,
            });
        }
        self.top.set(start + bytes);
        Ok(ArenaBuf {
            ptr: self.base + start as u64,
            len,
            _arena: PhantomData,
        })
    }

    /// Frees every buffer (they can no longer exist: each borrows the arena).
    pub fn reset(&mut self) {
        self.top.set(0);
    }

    /// Bytes handed out so far, alignment included.
    pub fn used(&self) -> usize {
        self.top.get()
    }

    /// Size of the arena in bytes.
    pub fn capacity(&self) -> usize {
        self.mem.len()
    }
}

/// A typed buffer inside an [`Arena`]. Not `Clone`, so writes through `&mut` cannot alias.
pub struct ArenaBuf<'a, T> {
    ptr: u64,
    len: usize,
    _arena: PhantomData<&'a [T]>,
}

/// Device memory a launcher may read: a pointer and an element count. Implemented for cudarc
/// slices and views and for [`ArenaBuf`].
pub trait DeviceBuf<T> {
    /// Number of `T` elements.
    fn elems(&self) -> usize;
    /// The raw device address, as passed to a kernel. With event tracking off (see
    /// [`Device::cuda`]) cudarc's ordering guard is a no-op, so dropping it at once is fine.
    fn device_addr(&self, stream: &CudaStream) -> u64;
}

/// Device memory a launcher may write (taken by `&mut`).
pub trait DeviceBufMut<T>: DeviceBuf<T> {}

impl<T> DeviceBuf<T> for CudaSlice<T> {
    fn elems(&self) -> usize {
        self.len()
    }
    fn device_addr(&self, stream: &CudaStream) -> u64 {
        self.device_ptr(stream).0
    }
}
impl<T> DeviceBufMut<T> for CudaSlice<T> {}

impl<T> DeviceBuf<T> for CudaView<'_, T> {
    fn elems(&self) -> usize {
        self.len()
    }
    fn device_addr(&self, stream: &CudaStream) -> u64 {
        self.device_ptr(stream).0
    }
}

impl<T> DeviceBuf<T> for CudaViewMut<'_, T> {
    fn elems(&self) -> usize {
        self.len()
    }
    fn device_addr(&self, stream: &CudaStream) -> u64 {
        self.device_ptr(stream).0
    }
}
impl<T> DeviceBufMut<T> for CudaViewMut<'_, T> {}

/// `len` elements of `T` at a device address inside memory someone else owns (a region of an
/// executor's arena). Not `Clone`; whoever makes one answers for the address.
#[derive(Debug)]
pub struct RawBuf<T> {
    ptr: u64,
    len: usize,
    _t: PhantomData<*const T>,
}

impl<T> RawBuf<T> {
    /// The buffer at `ptr`.
    ///
    /// # Safety
    /// `ptr` must be the address of `len` elements of `T` in device memory of this context
    /// that stays allocated while the buffer is used, and no other buffer written at the same
    /// time may overlap it.
    pub unsafe fn new(ptr: u64, len: usize) -> Self {
        RawBuf {
            ptr,
            len,
            _t: PhantomData,
        }
    }
}

impl<T> RawBuf<T> {
    /// The device address.
    pub fn addr(&self) -> u64 {
        self.ptr
    }

    /// The element count.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T> DeviceBuf<T> for RawBuf<T> {
    fn elems(&self) -> usize {
        self.len
    }
    fn device_addr(&self, _stream: &CudaStream) -> u64 {
        self.ptr
    }
}
impl<T> DeviceBufMut<T> for RawBuf<T> {}

impl<T> DeviceBuf<T> for ArenaBuf<'_, T> {
    fn elems(&self) -> usize {
        self.len
    }
    fn device_addr(&self, _stream: &CudaStream) -> u64 {
        self.ptr
    }
}
impl<T> DeviceBufMut<T> for ArenaBuf<'_, T> {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without libcuda (this dev/CI machine) the error names the library and nothing panics; with
    /// a driver and a GPU the device opens and reports an `sm_XY` target.
    #[test]
    fn cuda_device_opens_or_reports_a_missing_driver() {
        // SAFETY: a dlopen probe.
        let driver = unsafe { cudarc::driver::sys::is_culib_present() };
        match Device::cuda(0) {
            Ok(dev) => {
                assert!(driver);
                assert!(dev.arch().starts_with("sm_"), "{}", dev.arch());
                let e = dev.events().take().unwrap();
                dev.events().give(e);
                assert_eq!(dev.events().idle(), 1);
            }
            Err(CudaError::NoDevice(reason)) if driver => {
                // A driver without a usable GPU (a container with libcuda but no device).
                assert!(!reason.is_empty());
            }
            Err(e) => {
                assert!(!driver, "driver present but: {e}");
                let text = e.to_string();
                assert!(
                    text.starts_with("no CUDA driver found (libcuda.so): "),
                    "{text}"
                );
                assert!(text.contains("libcuda.so.1"), "{text}");
            }
        }
    }

    #[test]
    fn a_bad_ordinal_never_panics() {
        assert!(Device::cuda(usize::MAX).is_err());
    }
}
