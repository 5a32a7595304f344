//! Gives back to the system what start-up needed and a running daemon does not:
//! heap the allocator keeps after the model's plans were built, and the pages of
//! code only start-up ran (ONNX parsing, graph optimisation, configuration).
//!
//! Both are hints the kernel may ignore; nothing breaks when they fail. Code that
//! runs again is simply read back in (from the page cache) on first use.

/// Returns freed heap memory to the system (glibc's `malloc_trim`): building a
/// model plan allocates and frees tens of megabytes that the allocator would
/// otherwise keep.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no
    // pointers from us.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Lets the kernel reclaim the executable's code pages now, and stop reading
/// neighbours in around each page later touched: the binary's code is large
/// (tract's kernels for every CPU, the ONNX parser), a running daemon uses a
/// small part of it, and without this the start-up's pages stay in its RSS.
/// Linux only; a no-op elsewhere.
pub fn drop_startup_code() {
    #[cfg(target_os = "linux")]
    {
        let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
            return;
        };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return;
        };
        let exe = exe.to_string_lossy();
        for (start, end) in code_ranges(&maps, &exe) {
            let len = end - start;
            // SAFETY: the range is a mapping of our own executable, read from
            // /proc/self/maps; MADV_RANDOM and MADV_PAGEOUT only change paging
            // (a page paged out is read back on its next use), never contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, len, libc::MADV_RANDOM);
                libc::madvise(start as *mut libc::c_void, len, libc::MADV_PAGEOUT);
            }
        }
    }
}

/// The `(start, end)` of each read-only or executable mapping of `exe` in a
/// `/proc/self/maps` text (writable mappings hold data and stay).
pub fn code_ranges(maps: &str, exe: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?;
            // The path is the rest of the line, and may hold spaces.
            f.nth(2)?;
            let path = line.trim_end().strip_suffix(exe)?;
            if !path.ends_with(char::is_whitespace) || perms.contains('w') {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let a = usize::from_str_radix(a, 16).ok()?;
            let b = usize::from_str_radix(b, 16).ok()?;
            (b > a).then_some((a, b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_ranges_are_the_executables_read_only_mappings() {
        let maps = "\
55d0c0000000-55d0c0100000 r--p 00000000 fd:01 123 /usr/bin/hearken
55d0c0100000-55d0c1f00000 r-xp 00100000 fd:01 123 /usr/bin/hearken
55d0c1f00000-55d0c2000000 rw-p 01f00000 fd:01 123 /usr/bin/hearken
7f0000000000-7f0000100000 r-xp 00000000 fd:01 456 /usr/lib/libc.so.6
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(
            code_ranges(maps, "/usr/bin/hearken"),
            vec![
                (0x55d0c0000000, 0x55d0c0100000),
                (0x55d0c0100000, 0x55d0c1f00000)
            ]
        );
        assert!(code_ranges(maps, "/other").is_empty());
    }

    #[test]
    fn the_hints_do_not_break_the_running_process() {
        trim_heap();
        drop_startup_code();
        // Code still runs after its pages were let go.
        assert_eq!(code_ranges("", "x"), Vec::new());
    }
}
