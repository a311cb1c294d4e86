/*
 * continuum-sim-uno: an Arduino Uno on a pseudo-terminal, for tests and demos.
 *
 * An ATmega328P (simavr) at 16 MHz, paced to real time, with the Arduino
 * bootloader in its boot section and its UART on a pty. Like a real Uno, whose
 * DTR line resets the chip when a program opens the port, the board resets
 * into the bootloader whenever the port is opened (a pty has no DTR; the
 * master side sees the slave being opened). As a fallback it also resets when
 * a programmer's sync byte arrives after 250 ms of silence.
 *
 *   continuum-sim-uno --link PATH [--bootloader HEX] [--flash FILE] [--stuck ADDR]
 *
 * --link     a symbolic link to the pty, made at start and removed at exit
 * --flash    the flash image kept across runs (read at start if present,
 *            written at SIGTERM/SIGINT)
 * --stuck    a flash byte that always reads 0xFF (a worn cell), to make a
 *            verification fail at that address
 *
 * It prints "PTY <path>" once the port exists.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <simavr/avr_uart.h>
#include <simavr/sim_avr.h>
#include <simavr/sim_hex.h>
#include <simavr/sim_io.h>

#define FREQ 16000000UL
#define QUEUE 4096

static const char *DEFAULT_BOOT =
    "/usr/share/arduino/hardware/arduino/avr/bootloaders/atmega/ATmegaBOOT_168_atmega328.hex";

static volatile sig_atomic_t stop;
static int master = -1;

/* Bytes from the port to the UART, fed while the UART has room. */
static uint8_t rx[QUEUE];
static size_t rx_head, rx_len;
static int xon = 1;
static avr_irq_t *uart_in;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* A byte the firmware sends: to whoever has the port open (dropped if none). */
static void uart_out(struct avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq;
    (void)param;
    uint8_t b = (uint8_t)value;
    if (write(master, &b, 1) < 0) {
        /* Nobody reads, or the pty is full: a UART does not wait either. */
    }
}

static void uart_xon(struct avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq;
    (void)value;
    (void)param;
    xon = 1;
}

static void uart_xoff(struct avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq;
    (void)value;
    (void)param;
    xon = 0;
}

static void feed(void) {
    while (xon && rx_len > 0) {
        uint8_t b = rx[rx_head];
        rx_head = (rx_head + 1) % QUEUE;
        rx_len--;
        avr_raise_irq(uart_in, b);
    }
}

static void queue_in(const uint8_t *buf, size_t n) {
    for (size_t i = 0; i < n && rx_len < QUEUE; i++) {
        rx[(rx_head + rx_len) % QUEUE] = buf[i];
        rx_len++;
    }
}

static int halted;
/* When the bootloader was entered, and whether it has heard from a programmer. */
static double reset_at;
static int programmer_seen;

static int debug;

static void reset_to_bootloader(avr_t *avr) {
    if (debug)
        fprintf(stderr, "reset at cycle %llu (pc 0x%x)\n", (unsigned long long)avr->cycle, avr->pc);
    avr_reset(avr);
    avr->state = cpu_Running;
    halted = 0;
    rx_head = rx_len = 0;
    reset_at = now_s();
    programmer_seen = 0;
}

static int load_flash(avr_t *avr, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return errno == ENOENT ? 0 : -1;
    size_t n = fread(avr->flash, 1, avr->flashend + 1, f);
    fclose(f);
    return n == avr->flashend + 1 ? 0 : -1;
}

static int save_flash(avr_t *avr, const char *path) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return -1;
    size_t n = fwrite(avr->flash, 1, avr->flashend + 1, f);
    if (fclose(f) != 0 || n != avr->flashend + 1)
        return -1;
    return rename(tmp, path);
}

int main(int argc, char **argv) {
    const char *link_path = NULL, *boot_path = DEFAULT_BOOT, *flash_path = NULL;
    long stuck = -1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--link") && i + 1 < argc)
            link_path = argv[++i];
        else if (!strcmp(argv[i], "--bootloader") && i + 1 < argc)
            boot_path = argv[++i];
        else if (!strcmp(argv[i], "--flash") && i + 1 < argc)
            flash_path = argv[++i];
        else if (!strcmp(argv[i], "--stuck") && i + 1 < argc)
            stuck = strtol(argv[++i], NULL, 0);
        else {
            fprintf(stderr, "usage: %s --link PATH [--bootloader HEX] [--flash FILE] [--stuck ADDR]\n", argv[0]);
            return 2;
        }
    }
    if (!link_path) {
        fprintf(stderr, "%s: --link PATH is required\n", argv[0]);
        return 2;
    }

    avr_t *avr = avr_make_mcu_by_name("atmega328p");
    if (!avr) {
        fprintf(stderr, "no ATmega328P in this simavr\n");
        return 1;
    }
    avr_init(avr);
    avr->frequency = FREQ;
    avr->log = 0;
    memset(avr->flash, 0xff, avr->flashend + 1);
    if (flash_path && load_flash(avr, flash_path) != 0) {
        fprintf(stderr, "cannot read the flash image %s\n", flash_path);
        return 1;
    }
    uint32_t boot_size = 0, boot_base = 0;
    uint8_t *boot = read_ihex_file(boot_path, &boot_size, &boot_base);
    if (!boot) {
        fprintf(stderr, "cannot read the bootloader %s\n", boot_path);
        return 1;
    }
    memcpy(avr->flash + boot_base, boot, boot_size);
    free(boot);
    /* BOOTRST programmed, as on an Uno: a reset starts the bootloader. */
    avr->reset_pc = boot_base;
    avr->pc = boot_base;
    avr->codeend = avr->flashend;
    if (stuck > (long)avr->flashend) {
        fprintf(stderr, "--stuck %ld is beyond the flash\n", stuck);
        return 2;
    }

    struct termios raw;
    memset(&raw, 0, sizeof raw);
    cfmakeraw(&raw);
    cfsetspeed(&raw, B115200);
    int slave = -1;
    char name[256];
    if (openpty(&master, &slave, name, &raw, NULL) != 0) {
        perror("openpty");
        return 1;
    }
    /* The board does not hold its own port open: opening is the reset line. */
    close(slave);
    fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);
    unlink(link_path);
    if (symlink(name, link_path) != 0) {
        perror(link_path);
        return 1;
    }

    /* Nothing printed on the console: the pty is the console. (The core
     * still sleeps on an empty receiver, which stretches the bootloader's own
     * timeout: the board times it out itself, below.) */
    uint32_t flags = AVR_UART_FLAG_POLL_SLEEP;
    avr_ioctl(avr, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);
    avr_irq_t *out = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUTPUT);
    uart_in = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_INPUT);
    avr_irq_register_notify(out, uart_out, NULL);
    avr_irq_register_notify(
        avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XON), uart_xon, NULL);
    avr_irq_register_notify(
        avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XOFF), uart_xoff, NULL);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    reset_at = now_s();
    printf("PTY %s\n", name);
    fflush(stdout);

    debug = getenv("SIM_UNO_DEBUG") != NULL;
    double start = now_s();
    double last_report = 0;
    uint64_t start_cycle = avr->cycle;
    double last_input = 0;
    int was_open = 0;
    uint8_t buf[512];
    while (!stop) {
        /* About a millisecond of simulated time. */
        uint64_t until = avr->cycle + FREQ / 1000;
        while (!halted && avr->cycle < until) {
            int state = avr_run(avr);
            if (state == cpu_Done || state == cpu_Crashed)
                /* A firmware that stops leaves the chip halted, as a real one
                 * would: only a reset (opening the port) starts it again. */
                halted = 1;
            feed();
        }
        if (halted)
            avr->cycle = until;
        if (stuck >= 0)
            avr->flash[stuck] = 0xff;
        if (debug && now_s() - last_report > 0.5) {
            last_report = now_s();
            fprintf(stderr, "t %.2f cycle %llu pc 0x%x state %d rx %zu xon %d\n", last_report - start,
                    (unsigned long long)avr->cycle, avr->pc, avr->state, rx_len, xon);
        }

        struct pollfd p = {.fd = master, .events = POLLIN};
        poll(&p, 1, 0);
        int open_now = !(p.revents & POLLHUP);
        if (open_now && !was_open)
            reset_to_bootloader(avr);
        was_open = open_now;
        if (open_now && (p.revents & POLLIN)) {
            ssize_t n = read(master, buf, sizeof buf);
            if (n > 0) {
                double t = now_s();
                /* A programmer's sync after a silence, while the application
                 * runs: what an auto-reset circuit would have done. */
                if (buf[0] == 0x30 && t - last_input >= 0.25 && avr->pc < boot_base)
                    reset_to_bootloader(avr);
                last_input = t;
                if (avr->pc >= boot_base)
                    programmer_seen = 1;
                queue_in(buf, (size_t)n);
                feed();
            }
        }

        /* The bootloader's own wait for a programmer: about a second after a
         * reset with nothing heard, it starts the application (if any). */
        if (!programmer_seen && reset_at > 0 && now_s() - reset_at > 1.0 && avr->pc >= boot_base &&
            avr->flash[0] != 0xff) {
            avr->pc = 0;
            reset_at = 0;
        }

        /* Real time: sleep while the simulation is ahead of the clock. */
        double ahead = (double)(avr->cycle - start_cycle) / FREQ - (now_s() - start);
        if (ahead > 0.0005) {
            struct timespec d = {0, (long)(ahead * 1e9)};
            nanosleep(&d, NULL);
        } else if (ahead < -0.5) {
            /* Far behind (the machine was busy): do not race to catch up. */
            start = now_s() - (double)(avr->cycle - start_cycle) / FREQ;
        }
    }
    unlink(link_path);
    if (flash_path && save_flash(avr, flash_path) != 0) {
        fprintf(stderr, "cannot write the flash image %s\n", flash_path);
        return 1;
    }
    return 0;
}
