; guests/hello.bin: the README's first guest. 16-bit real mode, loaded at 0x10000 with
; CS = DS = 0x1000 (ferrovm's --raw defaults). Prints a line on COM1 and exits with
; status 0 through the debug-exit port. Assemble: nasm -f bin -o hello.bin hello.asm
bits 16
        mov si, msg
        mov dx, 0x3f8           ; COM1 data register
next:   lodsb
        test al, al
        jz done
        out dx, al
        jmp next
done:   mov al, 0
        out 0xf4, al            ; debug-exit: ferrovm exits with status 0
msg:    db "Hello from a ferrovm guest!", 10, 0
