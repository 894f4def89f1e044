//! The guest: 166 bytes of x86-64 code, hand-encoded below instruction by instruction
//! (the listing is GNU `as --64` output for the mnemonics in the comments).
//!
//! # Contract
//! - Guest RAM is guest-physical `[0, RDI)`; the code is at guest-physical 0 and the
//!   tenant's 64-bit tag at [`TAG_GPA`], both in page 0, written by the VMM. Everything
//!   from [`SCAN_START`] (page 1) to `RDI` is the guest's to check and fill.
//! - The VMM starts it at `RIP = 0` in 64-bit mode with flat segments and an identity map
//!   of the low 4 GiB (2 MiB pages, in a slot of the VMM's own above the guest's RAM),
//!   interrupts off, no stack (it uses none), `RDI` = RAM bytes (a multiple of 8, above
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
//!   3. [`PORT_NONZERO`]: how many 8-byte words of `[SCAN_START, RDI)` were non-zero.
//!   4. [`PORT_FIRST_NONZERO`]: the guest-physical address of the first (0 if none).
//!   5. [`PORT_FILL_TSC_LO`], [`PORT_FILL_TSC_HI`]: the `rdtsc` delta around its fill of
//!      `[SCAN_START, RDI)` with the tag.
//!   6. [`PORT_DONE`]: the low half of its tag. The VMM does not resume it after this.
//!
//! The vCPU is stopped at each `OUT` while the VMM handles it, so at step 4 the non-zero
//! word is still in memory for the VMM to read and report.
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

/// The code, loaded at [`ENTRY_GPA`].
#[rustfmt::skip]
pub const CODE: [u8; 166] = [
    // 00 start:
    0x66, 0xba, 0x00, 0x05,              // 00: mov dx,0x500
    0xee,                                // 04: out dx,al           ; PORT_STARTED: first instruction ran
    0x0f, 0x31,                          // 05: rdtsc
    0x48, 0xc1, 0xe2, 0x20,              // 07: shl rdx,0x20
    0x48, 0x09, 0xd0,                    // 0b: or rax,rdx
    0x48, 0x89, 0xc5,                    // 0e: mov rbp,rax         ; RBP = TSC at scan start
    0x31, 0xc9,                          // 11: xor ecx,ecx         ; RCX = non-zero words
    0x31, 0xdb,                          // 13: xor ebx,ebx         ; RBX = first non-zero address (0: none)
    0xbe, 0x00, 0x10, 0x00, 0x00,        // 15: mov esi,0x1000      ; RSI = SCAN_START
    // 1a scan:
    0x48, 0x8b, 0x06,                    // 1a: mov rax,[rsi]
    0x48, 0x85, 0xc0,                    // 1d: test rax,rax        ; one 8-byte word
    0x74, 0x0b,                          // 20: jz next
    0x48, 0x85, 0xdb,                    // 22: test rbx,rbx
    0x75, 0x03,                          // 25: jnz counted
    0x48, 0x89, 0xf3,                    // 27: mov rbx,rsi         ; remember the first
    // 2a counted:
    0x48, 0xff, 0xc1,                    // 2a: inc rcx
    // 2d next:
    0x48, 0x83, 0xc6, 0x08,              // 2d: add rsi,0x8
    0x48, 0x39, 0xfe,                    // 31: cmp rsi,rdi         ; RDI = RAM bytes (the end)
    0x72, 0xe4,                          // 34: jb scan
    0x0f, 0x31,                          // 36: rdtsc
    0x48, 0xc1, 0xe2, 0x20,              // 38: shl rdx,0x20
    0x48, 0x09, 0xd0,                    // 3c: or rax,rdx
    0x48, 0x29, 0xe8,                    // 3f: sub rax,rbp         ; RAX = scan cycles
    0x66, 0xba, 0x01, 0x05,              // 42: mov dx,0x501
    0xef,                                // 46: out dx,eax          ; PORT_SCAN_TSC_LO
    0x48, 0xc1, 0xe8, 0x20,              // 47: shr rax,0x20
    0x66, 0xff, 0xc2,                    // 4b: inc dx
    0xef,                                // 4e: out dx,eax          ; PORT_SCAN_TSC_HI
    0x89, 0xc8,                          // 4f: mov eax,ecx
    0x66, 0xff, 0xc2,                    // 51: inc dx
    0xef,                                // 54: out dx,eax          ; PORT_NONZERO
    0x89, 0xd8,                          // 55: mov eax,ebx
    0x66, 0xff, 0xc2,                    // 57: inc dx
    0xef,                                // 5a: out dx,eax          ; PORT_FIRST_NONZERO
    0x0f, 0x31,                          // 5b: rdtsc
    0x48, 0xc1, 0xe2, 0x20,              // 5d: shl rdx,0x20
    0x48, 0x09, 0xd0,                    // 61: or rax,rdx
    0x48, 0x89, 0xc5,                    // 64: mov rbp,rax         ; RBP = TSC at fill start
    0x48, 0x8b, 0x04, 0x25, 0x00, 0x08, 0x00, 0x00, // 67: mov rax,[0x800]     ; the tag, at TAG_GPA
    0xbe, 0x00, 0x10, 0x00, 0x00,        // 6f: mov esi,0x1000
    // 74 fill:
    0x48, 0x89, 0x06,                    // 74: mov [rsi],rax
    0x48, 0x83, 0xc6, 0x08,              // 77: add rsi,0x8
    0x48, 0x39, 0xfe,                    // 7b: cmp rsi,rdi
    0x72, 0xf4,                          // 7e: jb fill
    0x0f, 0x31,                          // 80: rdtsc
    0x48, 0xc1, 0xe2, 0x20,              // 82: shl rdx,0x20
    0x48, 0x09, 0xd0,                    // 86: or rax,rdx
    0x48, 0x29, 0xe8,                    // 89: sub rax,rbp         ; RAX = fill cycles
    0x66, 0xba, 0x05, 0x05,              // 8c: mov dx,0x505
    0xef,                                // 90: out dx,eax          ; PORT_FILL_TSC_LO
    0x48, 0xc1, 0xe8, 0x20,              // 91: shr rax,0x20
    0x66, 0xff, 0xc2,                    // 95: inc dx
    0xef,                                // 98: out dx,eax          ; PORT_FILL_TSC_HI
    0x48, 0x8b, 0x04, 0x25, 0x00, 0x08, 0x00, 0x00, // 99: mov rax,[0x800]
    0x66, 0xff, 0xc2,                    // a1: inc dx
    0xef,                                // a4: out dx,eax          ; PORT_DONE: the tag's low half
    0xf4,                                // a5: hlt                 ; not reached: the VMM stops at PORT_DONE
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
pub const INIT_CODE: [u8; 153] = [
    // 00 start:
    0x66, 0xba, 0x00, 0x05,               // 00: mov dx,0x500
    0xee,                                 // 04: out dx,al           ; PORT_STARTED
    0x0f, 0x31,                           // 05: rdtsc
    0x48, 0xc1, 0xe2, 0x20,               // 07: shl rdx,0x20
    0x48, 0x09, 0xd0,                     // 0b: or rax,rdx
    0x48, 0x89, 0xc5,                     // 0e: mov rbp,rax         ; RBP = TSC at the pass's start
    0x31, 0xc9,                           // 11: xor ecx,ecx         ; RCX = non-zero words
    0x31, 0xdb,                           // 13: xor ebx,ebx         ; RBX = first non-zero address (0: none)
    0x4c, 0x8b, 0x0c, 0x25, 0x00, 0x08, 0x00, 0x00, // 15: mov r9,[0x800]      ; R9 = the tag, at TAG_GPA
    0xbe, 0x00, 0x10, 0x00, 0x00,         // 1d: mov esi,0x1000      ; RSI = SCAN_START
    // 22 page:
    0x4c, 0x8d, 0x86, 0x00, 0x10, 0x00, 0x00, // 22: lea r8,[rsi+0x1000] ; R8 = this page's end
    // 29 scan:
    0x48, 0x8b, 0x06,                     // 29: mov rax,[rsi]
    0x48, 0x85, 0xc0,                     // 2c: test rax,rax        ; one 8-byte word
    0x74, 0x0b,                           // 2f: jz next
    0x48, 0x85, 0xdb,                     // 31: test rbx,rbx
    0x75, 0x03,                           // 34: jnz counted
    0x48, 0x89, 0xf3,                     // 36: mov rbx,rsi         ; remember the first
    // 39 counted:
    0x48, 0xff, 0xc1,                     // 39: inc rcx
    // 3c next:
    0x48, 0x83, 0xc6, 0x08,               // 3c: add rsi,0x8
    0x4c, 0x39, 0xc6,                     // 40: cmp rsi,r8
    0x72, 0xe4,                           // 43: jb scan
    0x48, 0x85, 0xc9,                     // 45: test rcx,rcx
    0x75, 0x18,                           // 48: jnz report          ; a non-zero word: stop, the page left as found
    0x48, 0x81, 0xee, 0x00, 0x10, 0x00, 0x00, // 4a: sub rsi,0x1000      ; back to the page's start
    // 51 fill:
    0x4c, 0x89, 0x0e,                     // 51: mov [rsi],r9        ; the page checked: write it
    0x48, 0x83, 0xc6, 0x08,               // 54: add rsi,0x8
    0x4c, 0x39, 0xc6,                     // 58: cmp rsi,r8
    0x72, 0xf4,                           // 5b: jb fill
    0x48, 0x39, 0xfe,                     // 5d: cmp rsi,rdi         ; RDI = RAM bytes (the end)
    0x72, 0xc0,                           // 60: jb page
    // 62 report:
    0x0f, 0x31,                           // 62: rdtsc
    0x48, 0xc1, 0xe2, 0x20,               // 64: shl rdx,0x20
    0x48, 0x09, 0xd0,                     // 68: or rax,rdx
    0x48, 0x29, 0xe8,                     // 6b: sub rax,rbp         ; RAX = cycles of the whole pass
    0x66, 0xba, 0x01, 0x05,               // 6e: mov dx,0x501
    0xef,                                 // 72: out dx,eax          ; PORT_SCAN_TSC_LO
    0x48, 0xc1, 0xe8, 0x20,               // 73: shr rax,0x20
    0x66, 0xff, 0xc2,                     // 77: inc dx
    0xef,                                 // 7a: out dx,eax          ; PORT_SCAN_TSC_HI
    0x89, 0xc8,                           // 7b: mov eax,ecx
    0x66, 0xff, 0xc2,                     // 7d: inc dx
    0xef,                                 // 80: out dx,eax          ; PORT_NONZERO
    0x89, 0xd8,                           // 81: mov eax,ebx
    0x66, 0xff, 0xc2,                     // 83: inc dx
    0xef,                                 // 86: out dx,eax          ; PORT_FIRST_NONZERO
    0x31, 0xc0,                           // 87: xor eax,eax
    0x66, 0xff, 0xc2,                     // 89: inc dx
    0xef,                                 // 8c: out dx,eax          ; PORT_FILL_TSC_LO: 0, no separate fill
    0x66, 0xff, 0xc2,                     // 8d: inc dx
    0xef,                                 // 90: out dx,eax          ; PORT_FILL_TSC_HI: 0
    0x4c, 0x89, 0xc8,                     // 91: mov rax,r9
    0x66, 0xff, 0xc2,                     // 94: inc dx
    0xef,                                 // 97: out dx,eax          ; PORT_DONE: the tag's low half
    0xf4,                                 // 98: hlt                 ; not reached: the VMM stops at PORT_DONE
];

/// Where the balloon prologue is loaded and starts, for a guest that boots below its
/// maximum (after [`CODE`], before the tag, in page 0).
pub const BALLOON_ENTRY: u64 = 0x100;
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

    #[test]
    fn the_code_fits_before_the_tag_and_names_its_ports() {
        assert!((CODE.len() as u64) < TAG_GPA);
        const { assert!(TAG_GPA + 8 <= SCAN_START) };
        // The immediates are where the listing says.
        assert_eq!(u16::from_le_bytes([CODE[0x02], CODE[0x03]]), PORT_STARTED);
        assert_eq!(u16::from_le_bytes([CODE[0x44], CODE[0x45]]), PORT_SCAN_TSC_LO);
        assert_eq!(u16::from_le_bytes([CODE[0x8e], CODE[0x8f]]), PORT_FILL_TSC_LO);
        assert_eq!(PORT_FIRST_NONZERO - PORT_SCAN_TSC_LO, 3, "three `inc dx` between them");
        assert_eq!(PORT_DONE - PORT_FILL_TSC_LO, 2, "two `inc dx` between them");
        for at in [0x16, 0x70] {
            assert_eq!(u32::from_le_bytes(CODE[at..at + 4].try_into().unwrap()) as u64, SCAN_START);
        }
        for at in [0x6b, 0x9d] {
            assert_eq!(u32::from_le_bytes(CODE[at..at + 4].try_into().unwrap()) as u64, TAG_GPA);
        }
        // Each branch lands on an instruction of the listing: rel8 from the next one.
        let target = |at: usize| (at as i64 + 2 + CODE[at + 1] as i8 as i64) as usize;
        assert_eq!([target(0x20), target(0x25), target(0x34), target(0x7e)], [0x2d, 0x2a, 0x1a, 0x74]);
        assert_eq!(CODE[0xa5], 0xf4, "ends with hlt");
    }

    #[test]
    fn the_init_code_fits_before_the_balloon_prologue_and_writes_each_page_after_its_check() {
        let c = &INIT_CODE;
        const { assert!(ENTRY_GPA + INIT_CODE.len() as u64 <= BALLOON_ENTRY) };
        assert_eq!(u16::from_le_bytes([c[0x02], c[0x03]]), PORT_STARTED);
        assert_eq!(u16::from_le_bytes([c[0x70], c[0x71]]), PORT_SCAN_TSC_LO);
        assert_eq!(u32::from_le_bytes(c[0x19..0x1d].try_into().unwrap()) as u64, TAG_GPA);
        assert_eq!(u32::from_le_bytes(c[0x1e..0x22].try_into().unwrap()) as u64, SCAN_START);
        // One page a step: its end (`lea`) and the way back to its start (`sub`) are 4 KiB.
        assert_eq!(u32::from_le_bytes(c[0x25..0x29].try_into().unwrap()), 4096);
        assert_eq!(u32::from_le_bytes(c[0x4d..0x51].try_into().unwrap()), 4096);
        // Six `inc dx` take PORT_SCAN_TSC_LO to PORT_DONE, as the ports are numbered.
        assert_eq!(c.windows(3).filter(|w| *w == [0x66, 0xff, 0xc2]).count(), 6);
        assert_eq!(PORT_DONE - PORT_SCAN_TSC_LO, 6);
        let target = |at: usize| (at as i64 + 2 + c[at + 1] as i8 as i64) as usize;
        // The check's branches; a non-zero page goes to the report before the fill; the
        // fill stays in its page; the next page after it.
        assert_eq!([target(0x2f), target(0x34), target(0x43)], [0x3c, 0x39, 0x29]);
        assert_eq!([target(0x48), target(0x5b), target(0x60)], [0x62, 0x51, 0x22]);
        assert_eq!(c[0x51..0x54], [0x4c, 0x89, 0x0e], "the fill writes the tag (R9)");
        assert_eq!(c[0x98], 0xf4, "ends with hlt");
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
