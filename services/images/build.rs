//! Assembles berth's embedded hello-world program: a static x86-64 ELF of a few
//! hundred bytes that writes Docker's hello message and exits 0. Built from bytes
//! so that it needs no cross toolchain and no libc.

use std::io::Write;

const MESSAGE: &[u8] = b"\nHello from Docker!\nThis message shows that your installation appears to be working correctly.\n\n";

fn main() {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("hello");
    std::fs::File::create(&out)
        .unwrap()
        .write_all(&elf())
        .unwrap();
    println!("cargo:rerun-if-changed=build.rs");
}

fn elf() -> Vec<u8> {
    const BASE: u64 = 0x400000;
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let code_off = EHDR + PHDR;
    let len = MESSAGE.len() as u32;
    let mut code: Vec<u8> = Vec::new();
    code.extend([0xb8, 1, 0, 0, 0]); // mov eax, 1 (write)
    code.extend([0xbf, 1, 0, 0, 0]); // mov edi, 1 (stdout)
    let lea_at = code.len();
    code.extend([0x48, 0x8d, 0x35, 0, 0, 0, 0]); // lea rsi, [rip+msg]
    code.push(0xba); // mov edx, len
    code.extend(len.to_le_bytes());
    code.extend([0x0f, 0x05]); // syscall
    code.extend([0xb8, 60, 0, 0, 0]); // mov eax, 60 (exit)
    code.extend([0x31, 0xff]); // xor edi, edi
    code.extend([0x0f, 0x05]); // syscall
    let msg_at = code.len();
    let disp = (msg_at - (lea_at + 7)) as i32;
    code[lea_at + 3..lea_at + 7].copy_from_slice(&disp.to_le_bytes());
    code.extend(MESSAGE);
    let total = (code_off + code.len()) as u64;

    let mut f = Vec::new();
    // ELF header
    f.extend([0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    f.extend([0u8; 8]);
    f.extend(2u16.to_le_bytes()); // ET_EXEC
    f.extend(0x3eu16.to_le_bytes()); // x86-64
    f.extend(1u32.to_le_bytes());
    f.extend((BASE + code_off as u64).to_le_bytes()); // entry
    f.extend((EHDR as u64).to_le_bytes()); // phoff
    f.extend(0u64.to_le_bytes()); // shoff
    f.extend(0u32.to_le_bytes()); // flags
    f.extend((EHDR as u16).to_le_bytes());
    f.extend((PHDR as u16).to_le_bytes());
    f.extend(1u16.to_le_bytes()); // phnum
    f.extend(64u16.to_le_bytes()); // shentsize
    f.extend(0u16.to_le_bytes()); // shnum
    f.extend(0u16.to_le_bytes()); // shstrndx
                                  // program header: PT_LOAD, R+X, the whole file
    f.extend(1u32.to_le_bytes());
    f.extend(5u32.to_le_bytes());
    f.extend(0u64.to_le_bytes()); // offset
    f.extend(BASE.to_le_bytes()); // vaddr
    f.extend(BASE.to_le_bytes()); // paddr
    f.extend(total.to_le_bytes()); // filesz
    f.extend(total.to_le_bytes()); // memsz
    f.extend(0x1000u64.to_le_bytes()); // align
    assert_eq!(f.len(), code_off);
    f.extend(code);
    f
}
