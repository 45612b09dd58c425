/* Files embedded in the binary at build time with the assembler's .incbin, from paths relative
 * to the top of the tree, where the Makefile compiles. -MMD does not see an .incbin: the Makefile
 * names each embedded file as a dependency of the object that embeds it. */
#ifndef RIVET_INCBIN_H
#define RIVET_INCBIN_H

#include <stddef.h>
#include <stdint.h>

#if SIZE_MAX > 0xffffffffu
#define RV_ASM_SIZE_T ".quad"
#else
#define RV_ASM_SIZE_T ".long"
#endif

/* Embed the file at path as name[] and its length as name_len. A NUL follows the bytes, not
 * counted in the length, so that a text is also a C string. */
#define RV_INCBIN(name, path)                                                                      \
    __asm__(".pushsection .rodata\n"                                                               \
            ".global " #name "\n"                                                                  \
            ".type " #name ", \"object\"\n"                                                        \
            ".balign 16\n" #name ":\n"                                                             \
            ".incbin \"" path "\"\n"                                                               \
            ".L" #name "_end:\n"                                                                   \
            ".byte 0\n"                                                                            \
            ".size " #name ", . - " #name "\n"                                                     \
            ".global " #name "_len\n"                                                              \
            ".type " #name "_len, \"object\"\n"                                                    \
            ".balign 8\n" #name "_len:\n" RV_ASM_SIZE_T " .L" #name "_end - " #name "\n"           \
            ".size " #name "_len, . - " #name "_len\n"                                             \
            ".popsection\n");                                                                      \
    extern const unsigned char name[];                                                             \
    extern const size_t name##_len

#endif
