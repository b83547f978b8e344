/* The far end of bench/serial_link.py's round trips, in C as a board's firmware would be.
 *
 * Written from docs/serial-protocol.md alone: it opens a pseudo-terminal, prints its path on
 * stdout and then, as `board_stub echo`, writes back whatever arrives, or, as
 * `board_stub board`, does the least a board must do to answer a controller: check each
 * frame's COBS and CRC, answer Hello with HelloReply, take sequenced messages in order,
 * answer each Divert with a DivertAnswer that accepts it, and acknowledge in the header of
 * every frame it sends (an Ack frame only for a read's worth that needed no answer). It keeps no schedule and never fires: it exists so that the
 * bench measures the controller's stack, not an emulated board's Python.
 *
 * Build: cc -O2 -o board_stub bench/board_stub.c
 */
#define _DEFAULT_SOURCE
#define _XOPEN_SOURCE 600
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

enum { HELLO = 0x01, HELLO_REPLY = 0x02, ACK = 0x03, DIVERT = 0x21, DIVERT_ANSWER = 0x14 };
enum { MAX_FRAME = 253 };

static uint8_t out[4096];
static size_t out_len;
static uint16_t next_seq = 1; /* our next sequenced message */
static uint16_t expect;       /* the controller's next seq; 0 before its first Hello */
static int ack_owed;

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

/* Bodies here are far shorter than 254 bytes, so every COBS block ends at a zero. */
static uint16_t seq_before(uint16_t seq) { return (uint16_t)((seq + 0xFFFD) % 0xFFFF + 1); }

static void send_frame(uint8_t type, uint16_t seq, const uint8_t *payload, size_t size) {
    uint8_t body[MAX_FRAME];
    uint16_t ack = expect ? seq_before(expect) : 0;
    body[0] = 2;
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

static int cobs_decode(const uint8_t *in, size_t size, uint8_t *body) {
    size_t at = 0, length = 0;
    while (at < size) {
        uint8_t code = in[at];
        if (code == 0 || at + code > size) return -1;
        memcpy(body + length, in + at + 1, code - 1u);
        length += code - 1u;
        at += code;
        if (code != 0xFF && at < size) body[length++] = 0;
    }
    return (int)length;
}

static void handle(const uint8_t *body, size_t size) {
    if (size < 8 || body[0] != 2) return;
    size -= 2;
    if (crc16(body, size) != (uint16_t)(body[size] << 8 | body[size + 1])) return;
    uint8_t type = body[1];
    uint16_t seq = (uint16_t)(body[2] << 8 | body[3]);
    const uint8_t *payload = body + 6; /* the header's ack is ignored: nothing is resent */
    if (type == HELLO && size == 12) {
        uint8_t reply[21] = {0, 0, 0, 1};          /* boot_id 1 */
        memcpy(reply + 4, payload, 4);             /* session */
        reply[8] = (uint8_t)(next_seq >> 8);       /* first_seq */
        reply[9] = (uint8_t)next_seq;
        reply[10] = 1;                             /* mode RUN; enc 0, scheduled 0 */
        expect = (uint16_t)(payload[4] << 8 | payload[5]);
        send_frame(HELLO_REPLY, 0, reply, sizeof reply);
        return;
    }
    if (seq == 0 || expect == 0) return;           /* unsequenced, or no session yet */
    ack_owed = 1;
    if (seq != expect) return;                     /* a duplicate or a gap: ack what we have */
    expect = seq_after(expect);
    if (type == DIVERT && size >= 10) {
        uint8_t answer[6] = {payload[0], payload[1], payload[2], payload[3], 1, 0};
        send_frame(DIVERT_ANSWER, next_seq, answer, sizeof answer);
        next_seq = seq_after(next_seq);
    }
}

int main(int argc, char **argv) {
    int echo = argc > 1 && strcmp(argv[1], "echo") == 0;
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) || unlockpt(master)) return perror("pty"), 1;
    const char *name = ptsname(master);
    int slave = open(name, O_RDWR | O_NOCTTY); /* held open: the pty lives until we exit */
    struct termios raw;
    if (slave < 0 || tcgetattr(slave, &raw)) return perror(name), 1;
    cfmakeraw(&raw);
    tcsetattr(slave, TCSANOW, &raw);
    printf("%s\n", name);
    fflush(stdout);

    uint8_t in[4096], frame[MAX_FRAME + 1], body[MAX_FRAME + 1];
    size_t frame_len = 0;
    for (;;) {
        ssize_t got = read(master, in, sizeof in);
        if (got <= 0) continue;
        if (echo) {
            if (write(master, in, (size_t)got) < 0) return 1;
            continue;
        }
        out_len = 0;
        for (ssize_t i = 0; i < got; i++) {
            if (in[i] != 0) {
                if (frame_len < sizeof frame) frame[frame_len++] = in[i];
                continue;
            }
            int size = frame_len && frame_len <= MAX_FRAME ? cobs_decode(frame, frame_len, body) : -1;
            if (size > 0) handle(body, (size_t)size);
            frame_len = 0;
        }
        if (ack_owed) send_frame(ACK, 0, in, 0); /* no answer carried it */
        if (out_len && write(master, out, out_len) < 0) return 1;
    }
}
