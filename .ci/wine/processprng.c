/* Wine 8 (Debian 12) lacks bcryptprimitives.dll, which Rust's std imports
 * for ProcessPrng; without it every Rust .exe exits at once with status 53.
 * This stand-in implements ProcessPrng with advapi32's RtlGenRandom. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk)) return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
