//! Kernel launches through `cuLaunchKernelEx`, with programmatic dependent launch (PDL) on
//! sm_90+: a kernel may start while the one before it finishes, prefetch its weights, and wait
//! for that kernel's results on the device (`pdl_enter` in kernels/prelude.cuh, which every
//! kernel launched here calls before touching its inputs or outputs).
//!
//! Every kernel's arguments are one struct declared with [`kernel_args!`]: its fields are the
//! kernel's parameters in order, each with the C type its Rust type stands for ([`KernelArg`]),
//! so a unit test (`signature.rs`) checks every declaration against the `extern "C"` signatures
//! in `kernels/*.cu` (count, order, names and types) without a GPU.

use crate::cuda::{CudaError, DPtr, DriverCtx, Gpu, Result};
use cudarc::driver::{sys, CudaFunction, LaunchConfig};
use half::bf16;
use std::ffi::c_void;

/// A scalar C type as the kernels spell it.
#[cfg_attr(not(test), allow(dead_code))] // read by the signature test
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    /// `__nv_bfloat16`.
    Bf16,
    /// `float`.
    F32,
    /// `int`.
    I32,
    /// `unsigned int`.
    U32,
    /// `unsigned long long`.
    U64,
    /// `char` (a byte address).
    U8,
}

/// A kernel parameter's C type (const-ness aside).
#[cfg_attr(not(test), allow(dead_code))] // read by the signature test
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CType {
    /// A pointer to the scalar.
    Ptr(Scalar),
    /// The scalar by value.
    Val(Scalar),
}

/// A Rust value a kernel parameter takes: the C type it stands for and where its bytes are.
pub trait KernelArg {
    /// The parameter's C type.
    #[cfg_attr(not(test), allow(dead_code))] // read by the signature test
    const CTYPE: CType;
    /// The address of the parameter's value, as `cuLaunchKernelEx` reads it (it copies the
    /// value during the call).
    fn param(&self) -> *mut c_void;
}

macro_rules! by_value {
    ($($t:ty => $s:ident),* $(,)?) => {$(
        impl KernelArg for $t {
            const CTYPE: CType = CType::Val(Scalar::$s);
            fn param(&self) -> *mut c_void {
                self as *const $t as *mut c_void
            }
        }
    )*};
}
by_value!(i32 => I32, u32 => U32, u64 => U64, f32 => F32);

/// A null device address, for an absent optional pointer.
static NULL: u64 = 0;

macro_rules! pointer {
    ($($t:ty => $s:ident),* $(,)?) => {$(
        impl KernelArg for DPtr<$t> {
            const CTYPE: CType = CType::Ptr(Scalar::$s);
            fn param(&self) -> *mut c_void {
                &self.addr as *const u64 as *mut c_void
            }
        }
        impl KernelArg for Option<DPtr<$t>> {
            const CTYPE: CType = CType::Ptr(Scalar::$s);
            fn param(&self) -> *mut c_void {
                match self {
                    Some(p) => p.param(),
                    None => &NULL as *const u64 as *mut c_void,
                }
            }
        }
    )*};
}
pointer!(bf16 => Bf16, f32 => F32, i32 => I32, u32 => U32, u8 => U8);

/// How a kernel is launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// With PDL where the GPU has it on.
    Pdl,
    /// With PDL, the function first opted into the launch's dynamic shared memory.
    PdlOptIn,
    /// Without PDL (a kernel that does not call `pdl_enter`).
    Plain,
}

/// Queue `name` with `args` (pointers to each parameter's value) on the GPU's stream.
///
/// # Safety
/// `args` must match the kernel's parameters in number, order and type (the [`kernel_args!`]
/// declarations are checked against the sources by a unit test), and every pointer argument
/// must address memory the kernel may touch (the typed wrappers check extents).
pub(crate) unsafe fn launch_raw(
    gpu: &Gpu,
    name: &'static str,
    args: &mut [*mut c_void],
    cfg: LaunchConfig,
    mode: Mode,
) -> Result<()> {
    let f: &CudaFunction = match mode {
        Mode::PdlOptIn => gpu
            .kernels
            .get_with_smem(name, cfg.shared_mem_bytes as usize)?,
        Mode::Pdl | Mode::Plain => gpu.kernels.get(name)?,
    };
    gpu.stream.context().bind_to_thread().ctx(name)?;
    // Zeroed, then set: the struct's padding field varies between CUDA versions.
    let mut attr: sys::CUlaunchAttribute = std::mem::zeroed();
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let pdl = mode != Mode::Plain && gpu.pdl();
    let config = sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: gpu.stream.cu_stream(),
        attrs: if pdl { &mut attr } else { std::ptr::null_mut() },
        numAttrs: pdl as u32,
    };
    sys::cuLaunchKernelEx(
        &config,
        f.cu_function(),
        args.as_mut_ptr(),
        std::ptr::null_mut(),
    )
    .result()
    .ctx(name)
}

/// Fail unless `name` is one of the entry points `kernels` lists (the ones declared to take
/// an argument struct).
pub(crate) fn declared(kernels: &[&'static str], name: &'static str) -> Result<()> {
    if kernels.contains(&name) {
        Ok(())
    } else {
        Err(CudaError::Invalid {
            kernel: name,
            msg: "launched with another kernel's arguments".into(),
        })
    }
}

/// One kernel parameter list as declared on the Rust side: the entry points taking it and its
/// parameters (name, C type) in order.
#[cfg(test)]
pub(crate) struct Declared {
    /// The argument struct's name.
    pub args: &'static str,
    /// Entry points launched with it.
    pub kernels: &'static [&'static str],
    /// Its parameters in order.
    pub params: &'static [(&'static str, CType)],
}

/// Declares kernel argument structs: for each, a struct whose fields are the kernel's
/// parameters in order (named as in the `.cu` source), the entry points it launches, and
/// `launch`, so a kernel's wrapper builds the struct with named fields and launches it.
/// Also declares `DECLARED`, every struct's parameter list, for the signature test.
macro_rules! kernel_args {
    ($(
        $(#[$doc:meta])*
        $name:ident for [$($kernel:literal),+ $(,)?] {
            $($field:ident: $ty:ty),* $(,)?
        }
    )*) => {
        $(
            $(#[$doc])*
            #[derive(Clone, Copy, Debug)]
            #[allow(non_snake_case)]
            pub(crate) struct $name {
                $(pub $field: $ty),*
            }

            impl $name {
                /// The entry points that take these arguments.
                pub(crate) const KERNELS: &'static [&'static str] = &[$($kernel),+];

                /// Queue `kernel` (one of [`Self::KERNELS`]) with these arguments.
                pub(crate) fn launch(
                    &self,
                    gpu: &Gpu,
                    kernel: &'static str,
                    cfg: LaunchConfig,
                    mode: Mode,
                ) -> Result<()> {
                    declared(Self::KERNELS, kernel)?;
                    let mut args = [$(KernelArg::param(&self.$field)),*];
                    // Safety: the fields are the kernel's parameters in order (the signature
                    // test checks them against kernels/*.cu); the wrappers check extents.
                    unsafe { launch_raw(gpu, kernel, &mut args, cfg, mode) }
                }
            }
        )*

        /// Every declared argument struct (checked against kernels/*.cu by a unit test).
        #[cfg(test)]
        pub(crate) const DECLARED: &[Declared] = &[$(Declared {
            args: stringify!($name),
            kernels: $name::KERNELS,
            params: &[$((stringify!($field), <$ty as KernelArg>::CTYPE)),*],
        }),*];
    };
}

pub(crate) use kernel_args;
