/* A line I/O board's firmware in C, written from docs/serial-protocol.md alone.
 *
 * It shares no code with the controller's driver: it is the far end that tells a bug of the
 * driver from a bug shared by both ends of the Python link. It opens a pseudo-terminal,
 * prints its path as the first line on stdout, and then runs as one of:
 *
 *   board_stub echo
 *       writes back whatever arrives (the baseline of bench/serial_link.py).
 *   board_stub board
 *       answers a controller with no diverters of its own: every Divert is accepted and
 *       nothing is held or fired (the latency far end of bench/serial_link.py).
 *   board_stub board D1=LEAD D2=LEAD ...
 *       a board driving these diverters, LEAD being each one's actuation lead in encoder
 *       counts (actuation time x belt speed): it refuses a Divert for any other diverter
 *       (UNKNOWN_DIVERTER), outside RUN (FAULT), past fire_enc - LEAD (LATE) or when its
 *       table is full (BUSY); holds the rest until the count reaches fire_enc, then sends
 *       Fired; drops them all on SetMode(SAFE), on a Hello of a new session and in its
 *       fail-safe (500 ms without a valid frame from the controller while in RUN).
 *
 * In every board mode it speaks the whole link of §4-§6: COBS and CRC-16/CCITT-FALSE,
 * Hello/HelloReply, NO_SESSION until the first Hello, in-order delivery with GAP, BAD_FRAME
 * and MALFORMED NAKs (rate-limited), the cumulative ACK in every header (an Ack frame only
 * for a batch that no other frame answered), a window of 64 with a queue of 512 behind it,
 * go-back-N on a NAK and on the 40 ms ACK timeout, 8 resend rounds before it waits for the
 * next Hello, and a Heartbeat every 100 ms.
 *
 * The board's inputs come as lines on stdin, from whatever stands in for the machine (a
 * test's emulated line); the diverter outputs go out as lines on stdout:
 *
 *   stdin  enc N              the encoder count is now N (sent on as an Encoder frame)
 *   stdin  eye ID B N         photo-eye ID was just blocked (B=1) or cleared (B=0), at count N
 *   stdin  bin ID N           bin ID's entry eye saw a parcel fall in, at count N
 *   stdin  level ID F         bin ID's full sensor tripped (F=1) or it was emptied (F=0)
 *   stdout hold C P D E W     divert C (parcel P) accepted: diverter D fires at count E for W ms
 *   stdout drop C             divert C dropped unfired (Cancel, SAFE, new session, fail-safe)
 *   stdout fired C D E        divert C's count E was reached: diverter D fired
 *
 * End of stdin (as when run from a terminal-less bench) just means no more inputs.
 *
 * Build: cc -O2 -o board_stub bench/board_stub.c
 */
#define _DEFAULT_SOURCE
#define _XOPEN_SOURCE 600
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

enum {
    HELLO = 0x01, HELLO_REPLY = 0x02, ACK = 0x03, NAK = 0x04, HEARTBEAT = 0x05,
    ENCODER = 0x10, EYE_EDGE = 0x11, BIN_ENTERED = 0x12, BIN_LEVEL = 0x13,
    DIVERT_ANSWER = 0x14, FIRED = 0x15, FAULT = 0x16,
    DIVERT = 0x21, CANCEL = 0x22, SET_MODE = 0x23,
};
enum { SAFE = 0, RUN = 1, MAINTENANCE = 2 };
enum { OK = 0, LATE = 1, BUSY = 2, UNKNOWN_DIVERTER = 3, REFUSED_FAULT = 4 };
enum { BAD_FRAME = 1, GAP = 2, MALFORMED = 3, NO_SESSION = 4 };
enum { MAX_FRAME = 253, MAX_BODY = 250, WINDOW = 64, QUEUE = 512, MAX_RESENDS = 8 };
enum { MAX_DIVERTERS = 32, MAX_HELD = 256 };
enum { PROTOCOL_VERSION = 3, FROM_BOARD = 0x80 };
static const double ACK_TIMEOUT_S = 0.040, HEARTBEAT_S = 0.100, FAILSAFE_S = 0.500;

typedef struct { uint8_t type; uint8_t size; uint8_t payload[MAX_BODY]; uint16_t seq; } Message;
typedef struct { char id[33]; uint64_t lead; } Diverter;
typedef struct { uint32_t command; char diverter[33]; uint64_t fire_enc; } Held;

static int master = -1;
static uint8_t out[1 << 16];
static size_t out_len;

static uint32_t boot_id, session;
static int has_session, mode = SAFE;
static uint16_t expect;        /* the controller's next seq, once it has said Hello */
static int ack_owed;
static uint16_t nak_expect = 0xFFFF; /* no NAK yet */
static double nak_at;

/* Our sequenced messages: ring[first .. first+count), of which the first `sent` are on
 * the wire unacknowledged (seq assigned), the rest queued. */
static Message ring[WINDOW + QUEUE];
static size_t first, count, sent;
static uint16_t next_seq = 1;
static double timer_start;
static int head_resends, failed;
static unsigned long echoes; /* frames of our own direction heard back */

static int answer_only; /* no diverters given: the bench's far end */
static Diverter diverters[MAX_DIVERTERS];
static int n_diverters;
static Held held[MAX_HELD];
static int n_held;
static uint64_t enc;
static double last_rx, last_heartbeat, started;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint16_t crc16(const uint8_t *data, size_t size) {
    uint16_t crc = 0xFFFF;
    while (size--) {
        crc ^= (uint16_t)(*data++) << 8;
        for (int bit = 0; bit < 8; bit++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

static uint16_t seq_after(uint16_t seq) { return (uint16_t)(seq % 0xFFFF + 1); }
static uint16_t seq_before(uint16_t seq) { return (uint16_t)((seq + 0xFFFD) % 0xFFFF + 1); }
static unsigned seq_ahead(uint16_t base, uint16_t seq) {
    return (unsigned)(((int)seq - (int)base + 0xFFFF) % 0xFFFF);
}

static void flush_out(void) {
    size_t at = 0;
    while (at < out_len) {
        ssize_t put = write(master, out + at, out_len - at);
        if (put <= 0) break; /* nobody has the port open: the bytes are lost, as on a wire */
        at += (size_t)put;
    }
    out_len = 0;
}

/* COBS(body ‖ crc) ‖ 0x00. Bodies are at most 250 bytes, so one block never fills. */
static void send_frame(uint8_t type, uint16_t seq, const uint8_t *payload, size_t size) {
    uint8_t body[MAX_BODY + 2];
    uint16_t ack = has_session ? seq_before(expect) : 0;
    if (out_len + 2 * sizeof body > sizeof out) flush_out();
    body[0] = PROTOCOL_VERSION | FROM_BOARD;
    body[1] = type;
    body[2] = (uint8_t)(seq >> 8);
    body[3] = (uint8_t)seq;
    body[4] = (uint8_t)(ack >> 8);
    body[5] = (uint8_t)ack;
    memcpy(body + 6, payload, size);
    uint16_t crc = crc16(body, 6 + size);
    body[6 + size] = (uint8_t)(crc >> 8);
    body[7 + size] = (uint8_t)crc;
    ack_owed = 0;
    size_t code_at = out_len++;
    uint8_t code = 1;
    for (size_t i = 0; i < 8 + size; i++) {
        if (body[i] == 0) {
            out[code_at] = code;
            code_at = out_len++;
            code = 1;
        } else {
            out[out_len++] = body[i];
            code++;
        }
    }
    out[code_at] = code;
    out[out_len++] = 0;
}

static Message *at(size_t i) { return &ring[(first + i) % (WINDOW + QUEUE)]; }

/* Put queued messages on the wire while the window has room (only once synced). */
static void flush_queue(double now) {
    if (!has_session || failed) return;
    while (sent < count && sent < WINDOW) {
        Message *m = at(sent);
        m->seq = next_seq;
        next_seq = seq_after(next_seq);
        if (sent == 0) { timer_start = now; head_resends = 0; }
        send_frame(m->type, m->seq, m->payload, m->size);
        sent++;
    }
}

static void queue_message(uint8_t type, const uint8_t *payload, size_t size, double now) {
    if (count == WINDOW + QUEUE) { /* full: drop the oldest not yet sent */
        for (size_t i = sent; i + 1 < count; i++) *at(i) = *at(i + 1);
        count--;
    }
    Message *m = at(count++);
    m->type = type;
    m->size = (uint8_t)size;
    memcpy(m->payload, payload, size);
    flush_queue(now);
}

static void resend_all(double now) {
    for (size_t i = 0; i < sent; i++) send_frame(at(i)->type, at(i)->seq, at(i)->payload, at(i)->size);
    timer_start = now;
}

static void acked_through(uint16_t ack, double now) {
    if (!sent) return;
    unsigned ahead = seq_ahead(at(0)->seq, ack);
    if (ahead >= sent) return; /* stale, or 0 */
    first = (first + ahead + 1) % (WINDOW + QUEUE);
    count -= ahead + 1;
    sent -= ahead + 1;
    head_resends = 0;
    timer_start = now;
}

static void nak(uint16_t at_expect, uint8_t reason, double now) {
    if (at_expect == nak_expect && now - nak_at < ACK_TIMEOUT_S) return;
    nak_expect = at_expect;
    nak_at = now;
    uint8_t p[3] = {(uint8_t)(at_expect >> 8), (uint8_t)at_expect, reason};
    send_frame(NAK, 0, p, 3);
}

static void put_u64(uint8_t *p, uint64_t v) { for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v; }
static uint64_t get_u64(const uint8_t *p) { uint64_t v = 0; for (int i = 0; i < 8; i++) v = v << 8 | p[i]; return v; }
static uint32_t get_u32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static void put_u32(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v; }

static size_t put_id(uint8_t *p, const char *id) {
    size_t n = strlen(id);
    p[0] = (uint8_t)n;
    memcpy(p + 1, id, n);
    return n + 1;
}

static int printable(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n; i++) if (s[i] < 0x20 || s[i] > 0x7E) return 0;
    return 1;
}

static void drop_all(void) {
    for (int i = 0; i < n_held; i++) printf("drop %u\n", held[i].command);
    n_held = 0;
}

static void fault(uint8_t code, const char *text, double now) {
    uint8_t p[1 + 32 + 1 + 1 + 64];
    size_t n = put_id(p, "io-board");
    p[n++] = code;
    n += put_id(p + n, text);
    queue_message(FAULT, p, n, now);
}

static void answer(uint32_t command, int accepted, uint8_t reason, double now) {
    uint8_t p[6];
    put_u32(p, command);
    p[4] = (uint8_t)accepted;
    p[5] = reason;
    queue_message(DIVERT_ANSWER, p, 6, now);
}

static void divert(const uint8_t *p, size_t n, double now) {
    uint32_t command = get_u32(p), parcel = get_u32(p + 4);
    char id[33];
    memcpy(id, p + 9, p[8]);
    id[p[8]] = 0;
    uint64_t fire_enc = get_u64(p + 9 + p[8]);
    unsigned pulse = (unsigned)(p[n - 2] << 8 | p[n - 1]);
    if (answer_only) { answer(command, 1, OK, now); return; }
    Diverter *d = NULL;
    for (int i = 0; i < n_diverters; i++) if (strcmp(diverters[i].id, id) == 0) d = &diverters[i];
    if (!d) { answer(command, 0, UNKNOWN_DIVERTER, now); return; }
    if (mode != RUN) { answer(command, 0, REFUSED_FAULT, now); return; }
    for (int i = 0; i < n_held; i++)
        if (held[i].command == command) { answer(command, 1, OK, now); return; } /* resent */
    if (fire_enc < d->lead || enc > fire_enc - d->lead) { answer(command, 0, LATE, now); return; }
    if (n_held == MAX_HELD) { answer(command, 0, BUSY, now); return; }
    held[n_held].command = command;
    strcpy(held[n_held].diverter, id);
    held[n_held].fire_enc = fire_enc;
    n_held++;
    printf("hold %u %u %s %llu %u\n", command, parcel, id, (unsigned long long)fire_enc, pulse);
    answer(command, 1, OK, now);
}

static void cancel(uint32_t command) {
    for (int i = 0; i < n_held; i++)
        if (held[i].command == command) {
            printf("drop %u\n", command);
            held[i] = held[--n_held];
            return;
        }
}

/* Which payload sizes a down message may have (ids are checked as they are read). */
static int well_formed(uint8_t type, uint16_t seq, const uint8_t *p, size_t n) {
    int sequenced = type == DIVERT || type == CANCEL || type == SET_MODE;
    if (sequenced != (seq != 0)) return 0;
    switch (type) {
    case HELLO: return n == 6;
    case ACK: return n == 0;
    case NAK: return n == 3 && p[2] >= BAD_FRAME && p[2] <= NO_SESSION;
    case HEARTBEAT: return n == 6 && p[4] <= MAINTENANCE && p[5] <= 1;
    case DIVERT:
        return n >= 9 && p[8] >= 1 && p[8] <= 32 && n == 19u + p[8] && printable(p + 9, p[8]);
    case CANCEL: return n == 4;
    case SET_MODE: return n == 1 && p[0] <= MAINTENANCE;
    case HELLO_REPLY: case ENCODER: case EYE_EDGE: case BIN_ENTERED: case BIN_LEVEL:
    case DIVERT_ANSWER: case FIRED: case FAULT:
        return -1; /* well formed perhaps, but ours to send: dropped */
    default: return 0;
    }
}

static void hello(const uint8_t *p, double now) {
    uint32_t their = get_u32(p);
    uint16_t first_seq = (uint16_t)(p[4] << 8 | p[5]);
    if (!has_session || their != session) {
        session = their;
        expect = first_seq;
        drop_all(); /* the previous controller's commands are void */
    } else {
        unsigned ahead = seq_ahead(expect, first_seq);
        if (ahead > 0 && ahead <= 0x7FFF) expect = first_seq;
    }
    has_session = 1;
    failed = 0;
    mode = RUN;
    nak_expect = 0xFFFF;
    uint8_t r[21];
    uint16_t ours = sent ? at(0)->seq : next_seq;
    put_u32(r, boot_id);
    put_u32(r + 4, session);
    r[8] = (uint8_t)(ours >> 8);
    r[9] = (uint8_t)ours;
    r[10] = (uint8_t)mode;
    put_u64(r + 11, enc);
    int scheduled = answer_only ? 0 : n_held;
    r[19] = (uint8_t)(scheduled >> 8);
    r[20] = (uint8_t)scheduled;
    send_frame(HELLO_REPLY, 0, r, sizeof r);
    head_resends = 0;
    resend_all(now);
    flush_queue(now);
}

static void handle(const uint8_t *frame, size_t frame_len, double now) {
    uint8_t raw[MAX_FRAME + 1];
    size_t size = 0, i = 0;
    while (i < frame_len) { /* COBS */
        uint8_t code = frame[i];
        if (i + code > frame_len) { size = 0; break; }
        memcpy(raw + size, frame + i + 1, code - 1u);
        size += code - 1u;
        i += code;
        if (code != 0xFF && i < frame_len) raw[size++] = 0;
    }
    if (size < 8 || crc16(raw, size - 2) != (uint16_t)(raw[size - 2] << 8 | raw[size - 1])) {
        if (has_session) nak(expect, BAD_FRAME, now);
        return;
    }
    size -= 2;
    uint8_t type = raw[1];
    uint16_t seq = (uint16_t)(raw[2] << 8 | raw[3]), ack = (uint16_t)(raw[4] << 8 | raw[5]);
    const uint8_t *p = raw + 6;
    size_t n = size - 6;
    if (raw[0] == (PROTOCOL_VERSION | FROM_BOARD)) { echoes++; return; } /* our own, echoed */
    int form = raw[0] == PROTOCOL_VERSION ? well_formed(type, seq, p, n) : 0;
    if (form == 0) {
        if (has_session) nak(expect, MALFORMED, now);
        return;
    }
    if (form < 0) return;
    last_rx = now;
    if (ack) acked_through(ack, now);
    if (type == HELLO) { hello(p, now); return; }
    if (!has_session) { nak(0, NO_SESSION, now); return; }
    if (seq == 0) { /* Ack, Nak, Heartbeat */
        if (type == NAK && p[2] != NO_SESSION && sent) {
            uint16_t e = (uint16_t)(p[0] << 8 | p[1]);
            unsigned ahead = seq_ahead(at(0)->seq, e);
            if (e && ahead <= sent) {
                if (ahead) acked_through(seq_before(e), now);
                if (sent && !failed) resend_all(now);
            }
        }
        return;
    }
    ack_owed = 1;
    unsigned ahead = seq_ahead(expect, seq);
    if (ahead != 0) {
        if (ahead <= 0x7FFF) nak(expect, GAP, now);
        return; /* a gap, or a duplicate */
    }
    expect = seq_after(expect);
    if (type == DIVERT) divert(p, n, now);
    else if (type == CANCEL) cancel(get_u32(p));
    else if (type == SET_MODE) {
        mode = p[0];
        if (mode == SAFE) drop_all();
    }
}

static void set_enc(uint64_t count_now, double now) {
    if (count_now == enc) return;
    enc = count_now;
    uint8_t p[8];
    put_u64(p, enc);
    send_frame(ENCODER, 0, p, 8);
    for (int i = 0; i < n_held;) {
        if (held[i].fire_enc <= enc) {
            uint8_t f[4 + 33 + 8];
            put_u32(f, held[i].command);
            size_t k = 4 + put_id(f + 4, held[i].diverter);
            put_u64(f + k, held[i].fire_enc);
            printf("fired %u %s %llu\n", held[i].command, held[i].diverter,
                   (unsigned long long)held[i].fire_enc);
            queue_message(FIRED, f, k + 8, now);
            held[i] = held[--n_held];
        } else {
            i++;
        }
    }
}

static void input(char *line, double now) {
    char id[64];
    unsigned long long a, b;
    uint8_t p[64];
    if (sscanf(line, "enc %llu", &a) == 1) {
        set_enc(a, now);
    } else if (sscanf(line, "eye %32s %llu %llu", id, &a, &b) == 3) {
        size_t k = put_id(p, id);
        p[k++] = (uint8_t)(a != 0);
        put_u64(p + k, b);
        queue_message(EYE_EDGE, p, k + 8, now);
    } else if (sscanf(line, "bin %32s %llu", id, &a) == 2) {
        size_t k = put_id(p, id);
        put_u64(p + k, a);
        queue_message(BIN_ENTERED, p, k + 8, now);
    } else if (sscanf(line, "level %32s %llu", id, &a) == 2) {
        size_t k = put_id(p, id);
        p[k++] = (uint8_t)(a != 0);
        queue_message(BIN_LEVEL, p, k, now);
    } else {
        fprintf(stderr, "board_stub: unknown input: %s\n", line);
    }
}

static void tick(double now) {
    if (now - last_heartbeat >= HEARTBEAT_S) {
        uint8_t p[13];
        put_u32(p, (uint32_t)((now - started) * 1000));
        p[4] = (uint8_t)mode;
        p[5] = !has_session || failed; /* the controller must say Hello again */
        send_frame(HEARTBEAT, 0, p, 6);
        put_u64(p, enc);
        send_frame(ENCODER, 0, p, 8);
        last_heartbeat = now;
    }
    if (mode == RUN && has_session && now - last_rx > FAILSAFE_S) {
        mode = SAFE;
        drop_all();
        fault(1, "controller heartbeat lost", now);
    }
    if (has_session && !failed && sent && now - timer_start >= ACK_TIMEOUT_S) {
        if (head_resends >= MAX_RESENDS) failed = 1; /* wait for the next Hello */
        else { head_resends++; resend_all(now); }
    }
}

int main(int argc, char **argv) {
    int echo = argc > 1 && strcmp(argv[1], "echo") == 0;
    for (int i = 2; i < argc && n_diverters < MAX_DIVERTERS; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq || eq - argv[i] > 32 || eq == argv[i]) return fprintf(stderr, "bad diverter %s\n", argv[i]), 2;
        memcpy(diverters[n_diverters].id, argv[i], (size_t)(eq - argv[i]));
        diverters[n_diverters].id[eq - argv[i]] = 0;
        diverters[n_diverters].lead = strtoull(eq + 1, NULL, 10);
        n_diverters++;
    }
    answer_only = n_diverters == 0;
    master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) || unlockpt(master)) return perror("pty"), 1;
    const char *name = ptsname(master);
    int slave = open(name, O_RDWR | O_NOCTTY); /* held open: the pty lives until we exit */
    struct termios raw;
    if (slave < 0 || tcgetattr(slave, &raw)) return perror(name), 1;
    cfmakeraw(&raw);
    tcsetattr(slave, TCSANOW, &raw);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("%s\n", name);
    fflush(stdout);
    started = last_rx = now_s();
    boot_id = (uint32_t)(started * 1e6) ^ (uint32_t)getpid() << 16;

    uint8_t in[4096], frame[MAX_FRAME + 1];
    size_t frame_len = 0;
    int overlong = 0;
    char line[256];
    size_t line_len = 0;
    int stdin_open = !echo;
    for (;;) {
        struct pollfd fds[2] = {{master, POLLIN, 0}, {0, POLLIN, 0}};
        int timeout_ms = echo ? -1 : 5;
        if (poll(fds, stdin_open ? 2 : 1, timeout_ms) < 0) continue;
        double now = now_s();
        if (fds[0].revents & POLLIN) {
            ssize_t got = read(master, in, sizeof in);
            if (echo && got > 0) {
                if (write(master, in, (size_t)got) < 0) return 1;
                continue;
            }
            for (ssize_t i = 0; i < got; i++) {
                if (in[i] != 0) {
                    if (frame_len < MAX_FRAME) frame[frame_len++] = in[i];
                    else overlong = 1; /* cannot be a frame: dropped as it comes */
                    continue;
                }
                if (overlong) { if (has_session) nak(expect, BAD_FRAME, now); }
                else if (frame_len) handle(frame, frame_len, now);
                frame_len = 0;
                overlong = 0;
            }
            flush_queue(now);
            if (ack_owed && has_session) send_frame(ACK, 0, in, 0); /* no answer carried it */
        }
        if (stdin_open && (fds[1].revents & (POLLIN | POLLHUP))) {
            ssize_t got = read(0, line + line_len, sizeof line - 1 - line_len);
            if (got <= 0) stdin_open = 0;
            else {
                line_len += (size_t)got;
                char *end;
                while ((end = memchr(line, '\n', line_len)) != NULL) {
                    *end = 0;
                    input(line, now);
                    size_t used = (size_t)(end - line) + 1;
                    memmove(line, end + 1, line_len - used);
                    line_len -= used;
                }
                if (line_len == sizeof line - 1) line_len = 0; /* an overlong line: dropped */
            }
        }
        if (!echo) tick(now);
        if (out_len) flush_out();
    }
}
