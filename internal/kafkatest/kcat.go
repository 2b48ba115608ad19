package kafkatest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// KcatAvailable reports whether kcat (Debian package kcat) is on PATH.
func KcatAvailable() bool {
	_, err := exec.LookPath("kcat")
	return err == nil
}

// KcatRead reads topic from its start with kcat, a librdkafka client, until
// n records were read or ctx ends; then it returns what it got and an error.
// Keys, values and headers keep their exact bytes, binary included.
func KcatRead(ctx context.Context, broker string, topic string, n int) ([]Record, error) {
	// -u: unbuffered, so a run cut short by ctx still yields what it read.
	cmd := exec.CommandContext(ctx, "kcat", "-C", "-q", "-u", "-b", broker, "-t", topic,
		"-o", "beginning", "-c", strconv.Itoa(n), "-J")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = time.Second
	out, runErr := cmd.Output() // what was read so far, even on error

	var got []Record
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var m kcatMessage
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if runErr == nil { // a complete run printed something unreadable
				return got, fmt.Errorf("kafkatest: reading kcat output: %w", err)
			}
			break // the run was cut short, maybe mid-record
		}
		r, err := m.record()
		if err != nil {
			return got, fmt.Errorf("kafkatest: reading kcat output: %w", err)
		}
		got = append(got, r)
	}
	if ctx.Err() != nil {
		return got, fmt.Errorf("kafkatest: kcat read %d of %d records from %s: %w", len(got), n, topic, ctx.Err())
	}
	if runErr != nil {
		return got, fmt.Errorf("kafkatest: kcat read %d of %d records from %s: %w: %s",
			len(got), n, topic, runErr, bytes.TrimSpace(stderr.Bytes()))
	}
	return got, nil
}

// kcatMessage is one object of `kcat -J` output. kcat writes the bytes of
// keys, values and headers unescaped unless they are ASCII control
// characters, so they are not always valid UTF-8: they stay raw here and go
// through jsonBytes rather than encoding/json's string decoding, which would
// replace invalid bytes.
type kcatMessage struct {
	Topic     string            `json:"topic"`
	Partition int32             `json:"partition"`
	Offset    int64             `json:"offset"`
	TSType    string            `json:"tstype"`
	TS        int64             `json:"ts"`
	Headers   []json.RawMessage `json:"headers"`
	Key       json.RawMessage   `json:"key"`
	Payload   json.RawMessage   `json:"payload"`
}

func (m *kcatMessage) record() (Record, error) {
	r := Record{Topic: m.Topic, Partition: m.Partition, Offset: m.Offset, Headers: map[string]string{}}
	if m.TSType != "" && m.TSType != "none" {
		r.Timestamp = time.UnixMilli(m.TS)
	}
	var err error
	if r.Key, err = jsonBytes(m.Key); err != nil {
		return r, fmt.Errorf("key of %s[%d]@%d: %w", m.Topic, m.Partition, m.Offset, err)
	}
	if r.Value, err = jsonBytes(m.Payload); err != nil {
		return r, fmt.Errorf("payload of %s[%d]@%d: %w", m.Topic, m.Partition, m.Offset, err)
	}
	if len(m.Headers)%2 != 0 {
		return r, fmt.Errorf("headers of %s[%d]@%d: odd number of elements", m.Topic, m.Partition, m.Offset)
	}
	for i := 0; i < len(m.Headers); i += 2 {
		k, err := jsonBytes(m.Headers[i])
		if err != nil {
			return r, fmt.Errorf("header key of %s[%d]@%d: %w", m.Topic, m.Partition, m.Offset, err)
		}
		v, err := jsonBytes(m.Headers[i+1])
		if err != nil {
			return r, fmt.Errorf("header %q of %s[%d]@%d: %w", k, m.Topic, m.Partition, m.Offset, err)
		}
		r.Headers[string(k)] = string(v)
	}
	return r, nil
}

// jsonBytes decodes a JSON string (or null, as nil) into its bytes, copying
// bytes that are not valid UTF-8 as they are.
func jsonBytes(raw json.RawMessage) ([]byte, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return nil, fmt.Errorf("not a JSON string: %.40q", raw)
	}
	s := raw[1 : len(raw)-1]
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		if i+1 >= len(s) {
			return nil, errors.New("truncated escape")
		}
		i++
		switch s[i] {
		case '"', '\\', '/':
			out = append(out, s[i])
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, used, err := unicodeEscape(s[i+1:])
			if err != nil {
				return nil, err
			}
			out = utf8.AppendRune(out, r)
			i += used
		default:
			return nil, fmt.Errorf("unknown escape \\%c", s[i])
		}
	}
	return out, nil
}

// unicodeEscape decodes the XXXX of \uXXXX at the start of s, and a following
// low surrogate escape if the first is a high surrogate. It returns the rune
// and how many bytes of s it used.
func unicodeEscape(s []byte) (rune, int, error) {
	hex4 := func(b []byte) (rune, bool) {
		if len(b) < 4 {
			return 0, false
		}
		v, err := strconv.ParseUint(string(b[:4]), 16, 32)
		return rune(v), err == nil
	}
	r, ok := hex4(s)
	if !ok {
		return 0, 0, fmt.Errorf("bad \\u escape %.6q", s)
	}
	if utf16.IsSurrogate(r) && len(s) >= 10 && s[4] == '\\' && s[5] == 'u' {
		if r2, ok := hex4(s[6:]); ok {
			if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
				return dec, 10, nil
			}
		}
	}
	return r, 4, nil
}
