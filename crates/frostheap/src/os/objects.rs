//! The objects loaded into the process (the executable and its shared
//! libraries), for unwinding: where each is mapped and where its
//! `.eh_frame_hdr` lies, from `dl_iterate_phdr(3)`.

use core::ffi::CStr;

/// One loaded object.
#[derive(Clone, Debug)]
pub(crate) struct LoadedObject {
    /// Its path (empty for the executable).
    pub name: String,
    /// The load bias: an address in the process is the address the object
    /// file states plus this.
    pub bias: usize,
    /// The process addresses its `PT_LOAD` segments cover: `(start, end,
    /// executable)`.
    pub segments: Vec<(usize, usize, bool)>,
    /// The process address and length of its `.eh_frame_hdr`
    /// (`PT_GNU_EH_FRAME`), if it has one.
    pub eh_frame_hdr: Option<(usize, usize)>,
}

/// Every object loaded now. Takes the dynamic loader's lock while it
/// runs: call it from an ordinary thread, never from a signal handler.
pub(crate) fn loaded_objects() -> Vec<LoadedObject> {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid info for the duration of
        // the call, and `data` is the Vec passed below.
        let (info, out) = unsafe { (&*info, &mut *(data as *mut Vec<LoadedObject>)) };
        let name = if info.dlpi_name.is_null() {
            String::new()
        } else {
            // SAFETY: a NUL-terminated string owned by the loader.
            unsafe { CStr::from_ptr(info.dlpi_name) }
                .to_string_lossy()
                .into_owned()
        };
        let bias = info.dlpi_addr as usize;
        let mut object = LoadedObject {
            name,
            bias,
            segments: Vec::new(),
            eh_frame_hdr: None,
        };
        for i in 0..info.dlpi_phnum as usize {
            // SAFETY: dlpi_phdr points at dlpi_phnum program headers.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            let start = bias + ph.p_vaddr as usize;
            match ph.p_type {
                libc::PT_LOAD => object.segments.push((
                    start,
                    start + ph.p_memsz as usize,
                    ph.p_flags & libc::PF_X != 0,
                )),
                libc::PT_GNU_EH_FRAME => object.eh_frame_hdr = Some((start, ph.p_memsz as usize)),
                _ => {}
            }
        }
        out.push(object);
        0
    }
    let mut out: Vec<LoadedObject> = Vec::new();
    // SAFETY: the callback matches dl_iterate_phdr's contract and only
    // touches `out`, which outlives the call.
    unsafe {
        libc::dl_iterate_phdr(
            Some(each),
            &mut out as *mut Vec<LoadedObject> as *mut libc::c_void,
        )
    };
    out
}
