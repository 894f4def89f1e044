//! The guest: x86-64 code, hand-encoded below instruction by instruction (the listing is
//! GNU `as --64` output for the mnemonics in the comments, `objdump -d -M intel`).
//!
//! # Contract
//! - Guest RAM is guest-physical `[0, RDI)`; the code is at guest-physical 0 and the
//!   tenant's 64-bit tag at [`TAG_GPA`], both in page 0, written by the VMM. Everything
//!   from [`SCAN_START`] (page 1) to `RDI` is the guest's to check and fill.
//! - The VMM starts it at `RIP = 0` in 64-bit mode with flat segments and an identity map
//!   of the low 4 GiB (2 MiB pages, in a slot of the VMM's own above the guest's RAM),
//!   interrupts off, no stack (it uses none), `RDI` = RAM bytes (a multiple of 4 KiB, above
//!   [`SCAN_START`], at most 3 GiB), at privilege 3 with IOPL 3 so its `OUT`s are allowed.
//!
//!   Why not 32-bit protected mode without paging, as first planned: the `/dev/kvm` of the
//!   machines this was built on is PVM (`kvm_pvm`, the page-table based KVM for nested
//!   hosts without hardware nesting), which runs a guest natively only in paged 64-bit
//!   mode and emulates everything else instruction by instruction: the same scan ran at
//!   about 1 MB/s unpaged (and in 32-bit compatibility mode), at several GB/s here. It runs
//!   the same on hardware KVM (VT-x, AMD-V).
//! - It talks through `OUT` to the ports below, in this order:
//!   1. [`PORT_STARTED`] (one byte, value meaningless): its first instruction ran.
//!   2. [`PORT_SCAN_TSC_LO`], [`PORT_SCAN_TSC_HI`]: the `rdtsc` delta around its scan.
//!   3. [`PORT_NONZERO`]: how many 8-byte words of the first 4 KiB page of
//!      `[SCAN_START, RDI)` holding a non-zero word are non-zero (0: every word is zero).
//!   4. [`PORT_FIRST_NONZERO`]: the guest-physical address of the first (0 if none). If
//!      there is one, the guest stops here (`hlt`) without writing anything.
//!   5. [`PORT_FILL_TSC_LO`], [`PORT_FILL_TSC_HI`]: the `rdtsc` delta around its fill of
//!      `[SCAN_START, RDI)` with the tag.
//!   6. [`PORT_DONE`]: the low half of its tag. The VMM does not resume it after this.
//!
//! The vCPU is stopped at each `OUT` while the VMM handles it, so at step 4 the non-zero
//! word is still in memory for the VMM to read and report.
//!
//! # How fast it goes, and why the check is still every word
//! As a guest kernel's own zeroing and checking would (issue 16's last goal: the guest's
//! passes as fast as the hardware allows, the same program on every backend):
//! - the scan reads a 64-byte line per step, eight 8-byte loads ORed into two registers
//!   and then one, and branches once a line. Every word is still read and checked: a
//!   line with a non-zero word sends the guest to a word-by-word count of that line's
//!   page (the words before it in the page were all zero), which finds the first
//!   non-zero word, and then it stops and reports;
//! - [`CODE`]'s fill writes with non-temporal stores (`movnti`, eight a line, then
//!   `sfence`): 1 GiB that was just read is not worth caching, and such stores skip the
//!   read-for-ownership a plain store pays on a line not in the cache;
//! - [`INIT_CODE`] writes each page right after checking it (its lines are then in the
//!   cache) with `rep stosq`, the fast-string stores a kernel's `clear_page` uses.
//!
//! # What the times include
//! `rdtsc` is read just before the first load of the scan and just after the last (and
//! the same around the fill), so a delta covers the loop and everything the host does
//! while the guest runs it: the faults that map guest RAM into KVM's page tables on first
//! touch (every backend), the host kernel's page faults that allocate and zero memory (the
//! `kernel` baseline, whose memory is not populated before the guest runs; reads of a
//! never-written anonymous page map the shared zero page, so that baseline pays for
//! allocation and zeroing mostly in the fill, at first write), and any time the vCPU
//! thread was descheduled.

/// Guest-physical address where the code is loaded and starts.
pub const ENTRY_GPA: u64 = 0;
/// Guest-physical address of the tenant's 64-bit tag (in the code's page).
pub const TAG_GPA: u64 = 0x800;
/// First guest-physical byte the guest scans and fills (page 0 holds the code).
pub const SCAN_START: u64 = 0x1000;
/// Port written first: the guest runs.
pub const PORT_STARTED: u16 = 0x500;
/// Port: low 32 bits of the scan's TSC delta.
pub const PORT_SCAN_TSC_LO: u16 = 0x501;
/// Port: high 32 bits of the scan's TSC delta.
pub const PORT_SCAN_TSC_HI: u16 = 0x502;
/// Port: number of non-zero 8-byte words found.
pub const PORT_NONZERO: u16 = 0x503;
/// Port: guest-physical address of the first non-zero word (0: none).
pub const PORT_FIRST_NONZERO: u16 = 0x504;
/// Port: low 32 bits of the fill's TSC delta.
pub const PORT_FILL_TSC_LO: u16 = 0x505;
/// Port: high 32 bits of the fill's TSC delta.
pub const PORT_FILL_TSC_HI: u16 = 0x506;
/// Port: the tag's low half, after the fill.
pub const PORT_DONE: u16 = 0x507;

/// The default program (`GuestProgram::ScanThenFill`), loaded at [`ENTRY_GPA`]: the
/// read-only scan of every word, then the fill.
#[rustfmt::skip]
pub const CODE: [u8; 274] = [
    // 00 start:
    0x66, 0xba, 0x00, 0x05,              // 00: mov dx,0x500
    0xee,                                // 04: out dx,al           ; PORT_STARTED: first instruction ran
    0x49, 0x89, 0xf8,                    // 05: mov r8,rdi          ; R8 = RAM bytes (the end)
    0x0f, 0x31,                          // 08: rdtsc
    0x48, 0xc1, 0xe2, 0x20,              // 0a: shl rdx,0x20
    0x48, 0x09, 0xd0,                    // 0e: or rax,rdx
    0x48, 0x89, 0xc5,                    // 11: mov rbp,rax         ; RBP = TSC at scan start
    0x31, 0xc9,                          // 14: xor ecx,ecx         ; RCX = non-zero words
    0x31, 0xdb,                          // 16: xor ebx,ebx         ; RBX = first non-zero address (0: none)
    0xbe, 0x00, 0x10, 0x00, 0x00,        // 18: mov esi,0x1000      ; RSI = SCAN_START
    // 1d scan:
    0x48, 0x8b, 0x06,                    // 1d: mov rax,[rsi]       ; a 64-byte line: eight words
    0x48, 0x8b, 0x56, 0x08,              // 20: mov rdx,[rsi+0x8]
    0x48, 0x0b, 0x46, 0x10,              // 24: or rax,[rsi+0x10]
    0x48, 0x0b, 0x56, 0x18,              // 28: or rdx,[rsi+0x18]
    0x48, 0x0b, 0x46, 0x20,              // 2c: or rax,[rsi+0x20]
    0x48, 0x0b, 0x56, 0x28,              // 30: or rdx,[rsi+0x28]
    0x48, 0x0b, 0x46, 0x30,              // 34: or rax,[rsi+0x30]
    0x48, 0x0b, 0x56, 0x38,              // 38: or rdx,[rsi+0x38]
    0x48, 0x09, 0xd0,                    // 3c: or rax,rdx          ; ORed into one
    0x75, 0x0b,                          // 3f: jne dirty           ; a non-zero word in it
    0x48, 0x83, 0xc6, 0x40,              // 41: add rsi,0x40
    0x4c, 0x39, 0xc6,                    // 45: cmp rsi,r8
    0x72, 0xd3,                          // 48: jb scan
    0xeb, 0x2a,                          // 4a: jmp scanned         ; all zero
    // 4c dirty:
    0x48, 0x81, 0xe6, 0x00, 0xf0, 0xff, 0xff, // 4c: and rsi,0xfffffffffffff000 ; back to its page's start
    0x4c, 0x8d, 0x8e, 0x00, 0x10, 0x00, 0x00, // 53: lea r9,[rsi+0x1000] ; R9 = the page's end
    // 5a count:
    0x48, 0x8b, 0x06,                    // 5a: mov rax,[rsi]       ; one word of the dirty page
    0x48, 0x85, 0xc0,                    // 5d: test rax,rax
    0x74, 0x0b,                          // 60: je next
    0x48, 0x85, 0xdb,                    // 62: test rbx,rbx
    0x75, 0x03,                          // 65: jne counted
    0x48, 0x89, 0xf3,                    // 67: mov rbx,rsi         ; remember the first
    // 6a counted:
    0x48, 0xff, 0xc1,                    // 6a: inc rcx
    // 6d next:
    0x48, 0x83, 0xc6, 0x08,              // 6d: add rsi,0x8
    0x4c, 0x39, 0xce,                    // 71: cmp rsi,r9
    0x72, 0xe4,                          // 74: jb count
    // 76 scanned:
    0x0f, 0x31,                          // 76: rdtsc
    0x48, 0xc1, 0xe2, 0x20,              // 78: shl rdx,0x20
    0x48, 0x09, 0xd0,                    // 7c: or rax,rdx
    0x48, 0x29, 0xe8,                    // 7f: sub rax,rbp         ; RAX = cycles
    0x66, 0xba, 0x01, 0x05,              // 82: mov dx,0x501
    0xef,                                // 86: out dx,eax          ; PORT_SCAN_TSC_LO
    0x48, 0xc1, 0xe8, 0x20,              // 87: shr rax,0x20
    0x66, 0xff, 0xc2,                    // 8b: inc dx
    0xef,                                // 8e: out dx,eax          ; PORT_SCAN_TSC_HI
    0x89, 0xc8,                          // 8f: mov eax,ecx
    0x66, 0xff, 0xc2,                    // 91: inc dx
    0xef,                                // 94: out dx,eax          ; PORT_NONZERO
    0x89, 0xd8,                          // 95: mov eax,ebx
    0x66, 0xff, 0xc2,                    // 97: inc dx
    0xef,                                // 9a: out dx,eax          ; PORT_FIRST_NONZERO
    0x48, 0x85, 0xc9,                    // 9b: test rcx,rcx
    0x75, 0x71,                          // 9e: jne stop            ; a non-zero word: stop, nothing written
    0x0f, 0x31,                          // a0: rdtsc
    0x48, 0xc1, 0xe2, 0x20,              // a2: shl rdx,0x20
    0x48, 0x09, 0xd0,                    // a6: or rax,rdx
    0x48, 0x89, 0xc5,                    // a9: mov rbp,rax         ; RBP = TSC at fill start
    0x48, 0x8b, 0x04, 0x25, 0x00, 0x08, 0x00, 0x00, // ac: mov rax,[0x800]     ; the tag, at TAG_GPA
    0xbe, 0x00, 0x10, 0x00, 0x00,        // b4: mov esi,0x1000
    // b9 fill:
    0x48, 0x0f, 0xc3, 0x06,              // b9: movnti [rsi],rax    ; a line of the tag, non-temporal
    0x48, 0x0f, 0xc3, 0x46, 0x08,        // bd: movnti [rsi+0x8],rax
    0x48, 0x0f, 0xc3, 0x46, 0x10,        // c2: movnti [rsi+0x10],rax
    0x48, 0x0f, 0xc3, 0x46, 0x18,        // c7: movnti [rsi+0x18],rax
    0x48, 0x0f, 0xc3, 0x46, 0x20,        // cc: movnti [rsi+0x20],rax
    0x48, 0x0f, 0xc3, 0x46, 0x28,        // d1: movnti [rsi+0x28],rax
    0x48, 0x0f, 0xc3, 0x46, 0x30,        // d6: movnti [rsi+0x30],rax
    0x48, 0x0f, 0xc3, 0x46, 0x38,        // db: movnti [rsi+0x38],rax
    0x48, 0x83, 0xc6, 0x40,              // e0: add rsi,0x40
    0x4c, 0x39, 0xc6,                    // e4: cmp rsi,r8
    0x72, 0xd0,                          // e7: jb fill
    0x0f, 0xae, 0xf8,                    // e9: sfence              ; the non-temporal stores done
    0x0f, 0x31,                          // ec: rdtsc
    0x48, 0xc1, 0xe2, 0x20,              // ee: shl rdx,0x20
    0x48, 0x09, 0xd0,                    // f2: or rax,rdx
    0x48, 0x29, 0xe8,                    // f5: sub rax,rbp         ; RAX = cycles
    0x66, 0xba, 0x05, 0x05,              // f8: mov dx,0x505
    0xef,                                // fc: out dx,eax          ; PORT_FILL_TSC_LO
    0x48, 0xc1, 0xe8, 0x20,              // fd: shr rax,0x20
    0x66, 0xff, 0xc2,                    // 101: inc dx
    0xef,                                // 104: out dx,eax         ; PORT_FILL_TSC_HI
    0x48, 0x8b, 0x04, 0x25, 0x00, 0x08, 0x00, 0x00, // 105: mov rax,[0x800]
    0x66, 0xff, 0xc2,                    // 10d: inc dx
    0xef,                                // 110: out dx,eax         ; PORT_DONE: the tag's low half
    // 111 stop:
    0xf4,                                // 111: hlt                ; the VMM stops at PORT_DONE or at a leak
];

/// The booting-OS variant of [`CODE`] (`scrubheap vmm --guest-init`), loaded at
/// [`ENTRY_GPA`] in its place, with the same contract and ports: it checks and writes
/// its RAM in one pass, a page at a time, as a booting kernel initialises the memory it
/// is given: every 8-byte word of a 4 KiB page read and checked zero, then the page
/// written with the tag, then the next page. The scan TSC delta it reports covers the
/// whole pass; the fill delta is 0 (there is no separate fill). At the first page
/// holding a non-zero word it stops before writing that page, so the word is still there
/// for the VMM to read, and reports that page's non-zero count and the first one's
/// address. Every word is still checked: the full zero check of [`CODE`], page by page.
#[rustfmt::skip]
pub const INIT_CODE: [u8; 209] = [
    // 00 start:
    0x66, 0xba, 0x00, 0x05,              // 00: mov dx,0x500
    0xee,                                // 04: out dx,al           ; PORT_STARTED
    0x49, 0x89, 0xfa,                    // 05: mov r10,rdi         ; R10 = RAM bytes (the end)
    0x0f, 0x31,                          // 08: rdtsc
    0x48, 0xc1, 0xe2, 0x20,              // 0a: shl rdx,0x20
    0x48, 0x09, 0xd0,                    // 0e: or rax,rdx
    0x48, 0x89, 0xc5,                    // 11: mov rbp,rax         ; RBP = TSC at the pass's start
    0x31, 0xc9,                          // 14: xor ecx,ecx         ; RCX = non-zero words
    0x31, 0xdb,                          // 16: xor ebx,ebx         ; RBX = first non-zero address (0: none)
    0x4c, 0x8b, 0x0c, 0x25, 0x00, 0x08, 0x00, 0x00, // 18: mov r9,[0x800]      ; R9 = the tag, at TAG_GPA
    0xbe, 0x00, 0x10, 0x00, 0x00,        // 20: mov esi,0x1000      ; RSI = SCAN_START
    // 25 page:
    0x4c, 0x8d, 0x86, 0x00, 0x10, 0x00, 0x00, // 25: lea r8,[rsi+0x1000] ; R8 = this page's end
    // 2c scan:
    0x48, 0x8b, 0x06,                    // 2c: mov rax,[rsi]       ; a 64-byte line: eight words
    0x48, 0x8b, 0x56, 0x08,              // 2f: mov rdx,[rsi+0x8]
    0x48, 0x0b, 0x46, 0x10,              // 33: or rax,[rsi+0x10]
    0x48, 0x0b, 0x56, 0x18,              // 37: or rdx,[rsi+0x18]
    0x48, 0x0b, 0x46, 0x20,              // 3b: or rax,[rsi+0x20]
    0x48, 0x0b, 0x56, 0x28,              // 3f: or rdx,[rsi+0x28]
    0x48, 0x0b, 0x46, 0x30,              // 43: or rax,[rsi+0x30]
    0x48, 0x0b, 0x56, 0x38,              // 47: or rdx,[rsi+0x38]
    0x48, 0x09, 0xd0,                    // 4b: or rax,rdx          ; ORed into one
    0x75, 0x22,                          // 4e: jne dirty           ; a non-zero word: count the page, write nothing
    0x48, 0x83, 0xc6, 0x40,              // 50: add rsi,0x40
    0x4c, 0x39, 0xc6,                    // 54: cmp rsi,r8
    0x72, 0xd3,                          // 57: jb scan
    0x48, 0x8d, 0xbe, 0x00, 0xf0, 0xff, 0xff, // 59: lea rdi,[rsi-0x1000] ; the page checked: write it
    0x4c, 0x89, 0xc8,                    // 60: mov rax,r9
    0xb9, 0x00, 0x02, 0x00, 0x00,        // 63: mov ecx,0x200       ; 512 words (RCX is 0 again after)
    0xf3, 0x48, 0xab,                    // 68: rep stosq           ; fast-string stores of the tag
    0x4c, 0x39, 0xd6,                    // 6b: cmp rsi,r10         ; RSI = the next page
    0x72, 0xb5,                          // 6e: jb page
    0xeb, 0x23,                          // 70: jmp report          ; every page clean and written
    // 72 dirty:
    0x48, 0x81, 0xe6, 0x00, 0xf0, 0xff, 0xff, // 72: and rsi,0xfffffffffffff000 ; back to the page's start
    // 79 count:
    0x48, 0x8b, 0x06,                    // 79: mov rax,[rsi]       ; one word of the dirty page
    0x48, 0x85, 0xc0,                    // 7c: test rax,rax
    0x74, 0x0b,                          // 7f: je next
    0x48, 0x85, 0xdb,                    // 81: test rbx,rbx
    0x75, 0x03,                          // 84: jne counted
    0x48, 0x89, 0xf3,                    // 86: mov rbx,rsi         ; remember the first
    // 89 counted:
    0x48, 0xff, 0xc1,                    // 89: inc rcx
    // 8c next:
    0x48, 0x83, 0xc6, 0x08,              // 8c: add rsi,0x8
    0x4c, 0x39, 0xc6,                    // 90: cmp rsi,r8
    0x72, 0xe4,                          // 93: jb count
    // 95 report:
    0x0f, 0x31,                          // 95: rdtsc
    0x48, 0xc1, 0xe2, 0x20,              // 97: shl rdx,0x20
    0x48, 0x09, 0xd0,                    // 9b: or rax,rdx
    0x48, 0x29, 0xe8,                    // 9e: sub rax,rbp         ; RAX = cycles of the whole pass
    0x66, 0xba, 0x01, 0x05,              // a1: mov dx,0x501
    0xef,                                // a5: out dx,eax          ; PORT_SCAN_TSC_LO
    0x48, 0xc1, 0xe8, 0x20,              // a6: shr rax,0x20
    0x66, 0xff, 0xc2,                    // aa: inc dx
    0xef,                                // ad: out dx,eax          ; PORT_SCAN_TSC_HI
    0x89, 0xc8,                          // ae: mov eax,ecx
    0x66, 0xff, 0xc2,                    // b0: inc dx
    0xef,                                // b3: out dx,eax          ; PORT_NONZERO
    0x89, 0xd8,                          // b4: mov eax,ebx
    0x66, 0xff, 0xc2,                    // b6: inc dx
    0xef,                                // b9: out dx,eax          ; PORT_FIRST_NONZERO
    0x48, 0x85, 0xc9,                    // ba: test rcx,rcx
    0x75, 0x11,                          // bd: jne stop            ; a non-zero word: stop, the page left as found
    0x31, 0xc0,                          // bf: xor eax,eax
    0x66, 0xff, 0xc2,                    // c1: inc dx
    0xef,                                // c4: out dx,eax          ; PORT_FILL_TSC_LO: 0, no separate fill
    0x66, 0xff, 0xc2,                    // c5: inc dx
    0xef,                                // c8: out dx,eax          ; PORT_FILL_TSC_HI: 0
    0x4c, 0x89, 0xc8,                    // c9: mov rax,r9
    0x66, 0xff, 0xc2,                    // cc: inc dx
    0xef,                                // cf: out dx,eax          ; PORT_DONE: the tag's low half
    // d0 stop:
    0xf4,                                // d0: hlt                 ; the VMM stops at PORT_DONE or at a leak
];

/// Where the balloon prologue is loaded and starts, for a guest that boots below its
/// maximum (after [`CODE`] and [`INIT_CODE`], before the tag, in page 0).
pub const BALLOON_ENTRY: u64 = 0x200;
/// Guest-physical address of the 64-bit byte count the guest keeps (its target), written
/// by the VMM for a guest that boots below its maximum.
pub const KEEP_GPA: u64 = 0x808;
/// Port: the guest gives back the [`BALLOON_CHUNK`] bytes at this guest-physical address
/// (its balloon driver's decrease reservation).
pub const PORT_BALLOON: u16 = 0x508;
/// What one [`PORT_BALLOON`] gives back: 2 MiB.
pub const BALLOON_CHUNK: u64 = 2 << 20;

/// The balloon prologue, loaded at [`BALLOON_ENTRY`], where a guest booted below its
/// maximum starts instead of [`ENTRY_GPA`].
///
/// # Contract
/// `RDI` = the guest's maximum in bytes and `[KEEP_GPA]` = the bytes it keeps, both
/// multiples of [`BALLOON_CHUNK`], `BALLOON_CHUNK <= keep < RDI`. For each chunk of
/// `[keep, RDI)` the guest reads its first word (its kernel touched that memory at boot
/// before the balloon driver took it: the chunk is populated, so giving it back takes a
/// mapping away) and writes the chunk's address to [`PORT_BALLOON`]. Then it sets
/// `RDI = keep` and jumps to [`ENTRY_GPA`]: [`CODE`] scans and fills only what it kept.
#[rustfmt::skip]
pub const BALLOON_PROLOGUE: [u8; 42] = [
    0x48, 0x8b, 0x34, 0x25, 0x08, 0x08, 0x00, 0x00, // 00: mov rsi,[0x808]     ; RSI = bytes kept
    // 08 balloon:
    0x48, 0x8b, 0x06,                    // 08: mov rax,[rsi]       ; touch the chunk
    0x89, 0xf0,                          // 0b: mov eax,esi
    0x66, 0xba, 0x08, 0x05,              // 0d: mov dx,0x508
    0xef,                                // 11: out dx,eax          ; PORT_BALLOON: give it back
    0x48, 0x81, 0xc6, 0x00, 0x00, 0x20, 0x00, // 12: add rsi,0x200000
    0x48, 0x39, 0xfe,                    // 19: cmp rsi,rdi
    0x72, 0xea,                          // 1c: jb balloon
    0x48, 0x8b, 0x3c, 0x25, 0x08, 0x08, 0x00, 0x00, // 1e: mov rdi,[0x808]     ; RDI = bytes kept
    0x31, 0xc0,                          // 26: xor eax,eax
    0xff, 0xe0,                          // 28: jmp rax             ; to CODE at ENTRY_GPA
];

/// Ports of the balloon guest ([`BALLOON_CODE`]), in the order it writes them.
pub mod balloon_ports {
    /// Its first instruction ran.
    pub const STARTED: u16 = 0x510;
    /// First guest frame number of the range it is about to give back (the range runs to
    /// the end of its RAM).
    pub const BASE_GFN: u16 = 0x511;
    /// Shrink: it gives back that many 4 KiB pages from `BASE_GFN` and waits (the vCPU is
    /// stopped at the `OUT` while the VMM takes the range away).
    pub const SHRINK_PAGES: u16 = 0x512;
    /// Grow: it asks for the same pages back and waits until they are mapped.
    pub const GROW_PAGES: u16 = 0x513;
    /// Low and high 32 bits of the TSC delta of its first write to each page it got back.
    pub const TOUCH_TSC_LO: u16 = 0x514;
    /// See [`TOUCH_TSC_LO`].
    pub const TOUCH_TSC_HI: u16 = 0x515;
    /// Low and high 32 bits of the TSC delta of its check of every word it got back.
    pub const CHECK_TSC_LO: u16 = 0x516;
    /// See [`CHECK_TSC_LO`].
    pub const CHECK_TSC_HI: u16 = 0x517;
    /// Non-zero 8-byte words found in the range it got back.
    pub const NONZERO: u16 = 0x518;
    /// Guest-physical address of the first (0: none). It then fills the range with its tag
    /// and starts the next round, or after the last writes [`DONE`].
    pub const FIRST_NONZERO: u16 = 0x519;
    /// The tag's low half: every round is done.
    pub const DONE: u16 = 0x51a;
}

/// The balloon guest, loaded at [`ENTRY_GPA`] (the listing is GNU `as --64` output for
/// the mnemonics in the comments), with the boot payload's contract for RAM, tag, mode
/// and privilege, and two more registers: `R8` = bytes it gives back each round (a
/// multiple of 4 KiB, below `RDI - SCAN_START`) and `R9` = rounds (at least 1).
///
/// It writes its tag over all of `[SCAN_START, RDI)` (so what it gives back is dirty),
/// then each round: names the top `R8` bytes of its RAM ([`balloon_ports::BASE_GFN`]),
/// gives them back ([`balloon_ports::SHRINK_PAGES`]), asks for them again
/// ([`balloon_ports::GROW_PAGES`]), writes once to each 4 KiB page of them without
/// changing it (`or qword [rsi],0`: where the VMM has not mapped memory yet, this is the
/// fault that maps, allocates and zeroes it), timed; reads every word of them, counting
/// the non-zero ones, timed; reports; and writes its tag over them again.
#[rustfmt::skip]
pub const BALLOON_CODE: [u8; 251] = [
    // 00 start:
    0x66, 0xba, 0x10, 0x05,              // 00: mov dx,0x510
    0xee,                                // 04: out dx,al
    0x48, 0x8b, 0x04, 0x25, 0x00, 0x08, 0x00, 0x00, // 05: mov rax,[0x800]
    0xbe, 0x00, 0x10, 0x00, 0x00,        // 0d: mov esi,0x1000
    // 12 fill_all:
    0x48, 0x89, 0x06,                    // 12: mov [rsi],rax
    0x48, 0x83, 0xc6, 0x08,              // 15: add rsi,0x8
    0x48, 0x39, 0xfe,                    // 19: cmp rsi,rdi
    0x72, 0xf4,                          // 1c: jb fill_all
    // 1e round:
    0x49, 0x89, 0xfa,                    // 1e: mov r10,rdi
    0x4d, 0x29, 0xc2,                    // 21: sub r10,r8
    0x4c, 0x89, 0xd0,                    // 24: mov rax,r10
    0x48, 0xc1, 0xe8, 0x0c,              // 27: shr rax,0xc
    0x66, 0xba, 0x11, 0x05,              // 2b: mov dx,0x511
    0xef,                                // 2f: out dx,eax
    0x4c, 0x89, 0xc0,                    // 30: mov rax,r8
    0x48, 0xc1, 0xe8, 0x0c,              // 33: shr rax,0xc
    0x66, 0xba, 0x12, 0x05,              // 37: mov dx,0x512
    0xef,                                // 3b: out dx,eax
    0x66, 0xba, 0x13, 0x05,              // 3c: mov dx,0x513
    0xef,                                // 40: out dx,eax
    0x0f, 0x31,                          // 41: rdtsc
    0x48, 0xc1, 0xe2, 0x20,              // 43: shl rdx,0x20
    0x48, 0x09, 0xd0,                    // 47: or rax,rdx
    0x48, 0x89, 0xc5,                    // 4a: mov rbp,rax
    0x4c, 0x89, 0xd6,                    // 4d: mov rsi,r10
    // 50 touch:
    0x48, 0x83, 0x0e, 0x00,              // 50: or qword [rsi],0x0
    0x48, 0x81, 0xc6, 0x00, 0x10, 0x00, 0x00, // 54: add rsi,0x1000
    0x48, 0x39, 0xfe,                    // 5b: cmp rsi,rdi
    0x72, 0xf0,                          // 5e: jb touch
    0x0f, 0x31,                          // 60: rdtsc
    0x48, 0xc1, 0xe2, 0x20,              // 62: shl rdx,0x20
    0x48, 0x09, 0xd0,                    // 66: or rax,rdx
    0x48, 0x29, 0xe8,                    // 69: sub rax,rbp
    0x66, 0xba, 0x14, 0x05,              // 6c: mov dx,0x514
    0xef,                                // 70: out dx,eax
    0x48, 0xc1, 0xe8, 0x20,              // 71: shr rax,0x20
    0x66, 0xff, 0xc2,                    // 75: inc dx
    0xef,                                // 78: out dx,eax
    0x0f, 0x31,                          // 79: rdtsc
    0x48, 0xc1, 0xe2, 0x20,              // 7b: shl rdx,0x20
    0x48, 0x09, 0xd0,                    // 7f: or rax,rdx
    0x48, 0x89, 0xc5,                    // 82: mov rbp,rax
    0x31, 0xc9,                          // 85: xor ecx,ecx
    0x31, 0xdb,                          // 87: xor ebx,ebx
    0x4c, 0x89, 0xd6,                    // 89: mov rsi,r10
    // 8c check:
    0x48, 0x8b, 0x06,                    // 8c: mov rax,[rsi]
    0x48, 0x85, 0xc0,                    // 8f: test rax,rax
    0x74, 0x0b,                          // 92: je next
    0x48, 0x85, 0xdb,                    // 94: test rbx,rbx
    0x75, 0x03,                          // 97: jne counted
    0x48, 0x89, 0xf3,                    // 99: mov rbx,rsi
    // 9c counted:
    0x48, 0xff, 0xc1,                    // 9c: inc rcx
    // 9f next:
    0x48, 0x83, 0xc6, 0x08,              // 9f: add rsi,0x8
    0x48, 0x39, 0xfe,                    // a3: cmp rsi,rdi
    0x72, 0xe4,                          // a6: jb check
    0x0f, 0x31,                          // a8: rdtsc
    0x48, 0xc1, 0xe2, 0x20,              // aa: shl rdx,0x20
    0x48, 0x09, 0xd0,                    // ae: or rax,rdx
    0x48, 0x29, 0xe8,                    // b1: sub rax,rbp
    0x66, 0xba, 0x16, 0x05,              // b4: mov dx,0x516
    0xef,                                // b8: out dx,eax
    0x48, 0xc1, 0xe8, 0x20,              // b9: shr rax,0x20
    0x66, 0xff, 0xc2,                    // bd: inc dx
    0xef,                                // c0: out dx,eax
    0x89, 0xc8,                          // c1: mov eax,ecx
    0x66, 0xff, 0xc2,                    // c3: inc dx
    0xef,                                // c6: out dx,eax
    0x89, 0xd8,                          // c7: mov eax,ebx
    0x66, 0xff, 0xc2,                    // c9: inc dx
    0xef,                                // cc: out dx,eax
    0x48, 0x8b, 0x04, 0x25, 0x00, 0x08, 0x00, 0x00, // cd: mov rax,[0x800]
    0x4c, 0x89, 0xd6,                    // d5: mov rsi,r10
    // d8 refill:
    0x48, 0x89, 0x06,                    // d8: mov [rsi],rax
    0x48, 0x83, 0xc6, 0x08,              // db: add rsi,0x8
    0x48, 0x39, 0xfe,                    // df: cmp rsi,rdi
    0x72, 0xf4,                          // e2: jb refill
    0x49, 0xff, 0xc9,                    // e4: dec r9
    0x0f, 0x85, 0x31, 0xff, 0xff, 0xff,  // e7: jne round
    0x48, 0x8b, 0x04, 0x25, 0x00, 0x08, 0x00, 0x00, // ed: mov rax,[0x800]
    0x66, 0xba, 0x1a, 0x05,              // f5: mov dx,0x51a
    0xef,                                // f9: out dx,eax
    0xf4,                                // fa: hlt
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the rel8 branch at `at` in `c` lands: relative to the next instruction.
    fn target(c: &[u8], at: usize) -> usize {
        (at as i64 + 2 + c[at + 1] as i8 as i64) as usize
    }

    fn imm32(c: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(c[at..at + 4].try_into().unwrap())
    }

    /// The unrolled check at `at`: eight loads of `[rsi]` to `[rsi+0x38]` (one 64-byte
    /// line, every word) into RAX and RDX, ORed together, a branch when non-zero, then
    /// the next line (`add rsi,0x40`).
    fn assert_reads_every_word_of_a_line(c: &[u8], at: usize) {
        assert_eq!(c[at..at + 3], [0x48, 0x8b, 0x06], "mov rax,[rsi]");
        for k in 1..8 {
            let i = at + 3 + (k - 1) * 4;
            let op = if k == 1 { 0x8b } else { 0x0b };
            let reg = if k % 2 == 0 { 0x46 } else { 0x56 };
            assert_eq!(c[i..i + 4], [0x48, op, reg, 8 * k as u8], "word {k} of the line");
        }
        assert_eq!(c[at + 31..at + 34], [0x48, 0x09, 0xd0], "or rax,rdx");
        assert_eq!(c[at + 34], 0x75, "jnz to the page's count");
        assert_eq!(c[at + 36..at + 40], [0x48, 0x83, 0xc6, 0x40], "add rsi,0x40: the next line");
    }

    /// The slow path at `at`: RSI back to its page's start, then one word at a time.
    fn assert_counts_the_dirty_page_from_its_start(c: &[u8], at: usize) {
        assert_eq!(c[at..at + 3], [0x48, 0x81, 0xe6], "and rsi,imm32");
        assert_eq!(imm32(c, at + 3) as i32, -4096);
    }

    #[test]
    fn the_code_fits_before_the_balloon_prologue_and_names_its_ports() {
        let c = &CODE;
        const { assert!(ENTRY_GPA + CODE.len() as u64 <= BALLOON_ENTRY) };
        const { assert!(TAG_GPA + 8 <= SCAN_START) };
        // The immediates are where the listing says.
        assert_eq!(u16::from_le_bytes([c[0x02], c[0x03]]), PORT_STARTED);
        assert_eq!(u16::from_le_bytes([c[0x84], c[0x85]]), PORT_SCAN_TSC_LO);
        assert_eq!(u16::from_le_bytes([c[0xfa], c[0xfb]]), PORT_FILL_TSC_LO);
        assert_eq!(PORT_FIRST_NONZERO - PORT_SCAN_TSC_LO, 3, "three `inc dx` between them");
        assert_eq!(PORT_DONE - PORT_FILL_TSC_LO, 2, "two `inc dx` between them");
        assert_eq!(c.windows(3).filter(|w| *w == [0x66, 0xff, 0xc2]).count(), 5);
        for at in [0x19, 0xb5] {
            assert_eq!(imm32(c, at) as u64, SCAN_START);
        }
        for at in [0xb0, 0x109] {
            assert_eq!(imm32(c, at) as u64, TAG_GPA);
        }
        assert_reads_every_word_of_a_line(c, 0x1d);
        assert_counts_the_dirty_page_from_its_start(c, 0x4c);
        assert_eq!(imm32(c, 0x56), 4096, "the count stops at the page's end");
        // Each branch lands on an instruction of the listing: a non-zero line goes to the
        // count, a clean RAM to the report; after the report, a non-zero word stops the
        // guest before the fill.
        let t = |at| target(c, at);
        assert_eq!([t(0x3f), t(0x48), t(0x4a)], [0x4c, 0x1d, 0x76]);
        assert_eq!([t(0x60), t(0x65), t(0x74)], [0x6d, 0x6a, 0x5a]);
        assert_eq!([t(0x9b + 3), t(0xe7)], [0x111, 0xb9]);
        assert_eq!(c[0x9b..0x9e], [0x48, 0x85, 0xc9], "the stop tests the count (RCX)");
        // The fill: a line of non-temporal stores of the tag (RAX) per step, then a fence.
        let movnti: Vec<usize> = (0..c.len() - 1).filter(|&i| c[i..i + 2] == [0x0f, 0xc3]).collect();
        assert_eq!(movnti.len(), 8);
        assert!(movnti.iter().all(|&i| (0xb9..0xe0).contains(&i)));
        assert_eq!(c[0xe0..0xe4], [0x48, 0x83, 0xc6, 0x40], "add rsi,0x40");
        assert_eq!(c[0xe9..0xec], [0x0f, 0xae, 0xf8], "sfence before the fill's end is timed");
        assert_eq!(c[0x111], 0xf4, "ends with hlt");
    }

    #[test]
    fn the_init_code_fits_before_the_balloon_prologue_and_writes_each_page_after_its_check() {
        let c = &INIT_CODE;
        const { assert!(ENTRY_GPA + INIT_CODE.len() as u64 <= BALLOON_ENTRY) };
        assert_eq!(u16::from_le_bytes([c[0x02], c[0x03]]), PORT_STARTED);
        assert_eq!(u16::from_le_bytes([c[0xa3], c[0xa4]]), PORT_SCAN_TSC_LO);
        assert_eq!(imm32(c, 0x1c) as u64, TAG_GPA);
        assert_eq!(imm32(c, 0x21) as u64, SCAN_START);
        // One page a step: its end (`lea r8`) 4 KiB on, and the write goes back 4 KiB
        // (`lea rdi`) for 512 words (`mov ecx`) of `rep stosq`.
        assert_eq!(imm32(c, 0x28), 4096);
        assert_reads_every_word_of_a_line(c, 0x2c);
        assert_eq!(imm32(c, 0x5c) as i32, -4096);
        assert_eq!(imm32(c, 0x64), 512);
        assert_eq!(c[0x68..0x6b], [0xf3, 0x48, 0xab], "rep stosq");
        assert_counts_the_dirty_page_from_its_start(c, 0x72);
        // Six `inc dx` take PORT_SCAN_TSC_LO to PORT_DONE, as the ports are numbered.
        assert_eq!(c.windows(3).filter(|w| *w == [0x66, 0xff, 0xc2]).count(), 6);
        assert_eq!(PORT_DONE - PORT_SCAN_TSC_LO, 6);
        // A non-zero line goes to the count before the page is written; the write comes
        // only after the last line of the page; then the next page, or the report.
        let t = |at| target(c, at);
        assert_eq!([t(0x4e), t(0x57), t(0x6e), t(0x70)], [0x72, 0x2c, 0x25, 0x95]);
        assert_eq!([t(0x7f), t(0x84), t(0x93), t(0xbd)], [0x8c, 0x89, 0x79, 0xd0]);
        assert_eq!(c[0x60..0x63], [0x4c, 0x89, 0xc8], "the write stores the tag (R9)");
        assert_eq!(c[0xd0], 0xf4, "ends with hlt");
    }

    #[test]
    fn the_balloon_prologue_fits_between_the_code_and_the_tag_and_names_its_port() {
        const { assert!(ENTRY_GPA + CODE.len() as u64 <= BALLOON_ENTRY) };
        const { assert!(BALLOON_ENTRY + BALLOON_PROLOGUE.len() as u64 <= TAG_GPA) };
        const { assert!(TAG_GPA + 8 <= KEEP_GPA && KEEP_GPA + 8 <= SCAN_START) };
        let c = &BALLOON_PROLOGUE;
        for at in [0x04, 0x22] {
            assert_eq!(u32::from_le_bytes(c[at..at + 4].try_into().unwrap()) as u64, KEEP_GPA);
        }
        assert_eq!(u16::from_le_bytes([c[0x0f], c[0x10]]), PORT_BALLOON);
        assert_eq!(u32::from_le_bytes(c[0x15..0x19].try_into().unwrap()) as u64, BALLOON_CHUNK);
        assert_eq!(0x1c + 2 + c[0x1d] as i8 as i64, 0x08, "the loop goes back to the touch");
        assert_eq!(c[c.len() - 2..], [0xff, 0xe0], "ends jumping to RAX = ENTRY_GPA");
    }

    #[test]
    fn the_balloon_code_fits_and_names_its_ports() {
        use super::balloon_ports as b;
        assert!((BALLOON_CODE.len() as u64) < TAG_GPA);
        let port = |at: usize| u16::from_le_bytes([BALLOON_CODE[at], BALLOON_CODE[at + 1]]);
        assert_eq!(
            [port(0x02), port(0x2d), port(0x39), port(0x3e)],
            [b::STARTED, b::BASE_GFN, b::SHRINK_PAGES, b::GROW_PAGES]
        );
        assert_eq!([port(0x6e), port(0xb6), port(0xf7)], [b::TOUCH_TSC_LO, b::CHECK_TSC_LO, b::DONE]);
        assert_eq!(b::FIRST_NONZERO - b::CHECK_TSC_LO, 3, "three `inc dx` between them");
        for at in [0x09, 0xd1, 0xf1] {
            assert_eq!(u32::from_le_bytes(BALLOON_CODE[at..at + 4].try_into().unwrap()) as u64, TAG_GPA);
        }
        let target = |at: usize| (at as i64 + 2 + BALLOON_CODE[at + 1] as i8 as i64) as usize;
        assert_eq!(
            [target(0x1c), target(0x5e), target(0x92), target(0x97), target(0xa6), target(0xe2)],
            [0x12, 0x50, 0x9f, 0x9c, 0x8c, 0xd8]
        );
        let rel32 = i32::from_le_bytes(BALLOON_CODE[0xe9..0xed].try_into().unwrap());
        assert_eq!(0xed + rel32 as i64, 0x1e, "the rounds loop back to `round`");
        assert_eq!(BALLOON_CODE[0x50..0x54], [0x48, 0x83, 0x0e, 0x00], "the touch writes without changing the word");
        assert_eq!(BALLOON_CODE[0xfa], 0xf4, "ends with hlt");
    }
}
