/* Arduino sensor flow (SERVERLESS4IOT smart-building example), for an ATmega328P
 * (Arduino Uno) at 16 MHz. Samples a PIR sensor on PD2 and a door contact on PD3
 * and prints one presence indicator per second on the UART at 115200 baud:
 *   {"pir":1,"door":0,"ts":42}
 * Build: avr-gcc -mmcu=atmega328p -DF_CPU=16000000UL -Os -o arduino-flow.elf arduino-flow.c
 *        avr-objcopy -O ihex -R .eeprom arduino-flow.elf arduino-flow-v1.hex
 * Define DEBOUNCE to build v2 (the door contact must hold for 4 samples). */
#include <avr/io.h>
#include <util/delay.h>
#include <stdio.h>

static int uart_putchar(char c, FILE *stream) {
    (void)stream;
    while (!(UCSR0A & (1 << UDRE0))) {}
    UDR0 = c;
    return 0;
}

static FILE uart_out = FDEV_SETUP_STREAM(uart_putchar, NULL, _FDEV_SETUP_WRITE);

int main(void) {
    /* 115200 baud with U2X: UBRR = F_CPU / (8 * baud) - 1 = 16 */
    UCSR0A = (1 << U2X0);
    UBRR0 = 16;
    UCSR0B = (1 << TXEN0);
    UCSR0C = (1 << UCSZ01) | (1 << UCSZ00);
    DDRD &= ~((1 << PD2) | (1 << PD3));
    PORTD |= (1 << PD3); /* pull-up on the door contact */
    stdout = &uart_out;
    unsigned long ts = 0;
#ifdef DEBOUNCE
    unsigned char door_run = 0;
#endif
    for (;;) {
        unsigned char pir = (PIND >> PD2) & 1;
        unsigned char door = !((PIND >> PD3) & 1);
#ifdef DEBOUNCE
        door_run = door ? (door_run < 4 ? door_run + 1 : 4) : 0;
        door = door_run >= 4;
#endif
        printf("{\"pir\":%u,\"door\":%u,\"ts\":%lu}\n", pir, door, ts++);
        _delay_ms(1000);
    }
}
