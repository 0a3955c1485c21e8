package storage

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/bbolt"
)

// The write-ahead log makes each group commit one sequential write and one
// fdatasync instead of a bbolt transaction (a dozen scattered pages and two
// syncs). The committer writes every batch to the log when its window
// closes, and applies the logged batches to bbolt together, in one
// transaction, about once per CheckpointInterval (and whenever a caller
// needs bbolt to be current: Flush, AddCredits, Backup, Close; a batch of
// directBatch ops or more is applied at once instead of logged). That
// transaction also stores the last applied batch's sequence number, so
// replaying the log on Open applies exactly the batches bbolt lacks.
//
// File: a header (walMagic, then the database's log id, 8 bytes), then
// records: payload length (4 bytes), CRC-32C of the payload (4 bytes),
// payload. Payload: batch sequence (8 bytes), op count and settlement count
// (4 bytes each), the ops (appendWALOp). After a checkpoint new records
// overwrite the applied ones from the start (see reset). Replay stops at
// the first record that is short, fails its checksum or does not follow
// the previous one: a crash can tear only the last write, and a record the
// crash kept after a torn one was never reported durable.
//
// The log id changes with every backup (see committer.snapshot), so a
// restored backup never takes a log written after it.

const walMagic = "GWZWAL1\n"

const (
	walHeaderLen = len(walMagic) + 8
	walRecordHdr = 8  // length + CRC
	walPayloadHd = 16 // sequence + op count + settlement count
)

var (
	kWALApplied = []byte("wal_applied") // sequence of the last batch applied to bbolt
	kWALID      = []byte("wal_id")      // random id tying a log file to this database
	kWALPrevID  = []byte("wal_prev_id") // the id before the last backup (see committer.snapshot)

	walCRC = crc32.MakeTable(crc32.Castagnoli)
)

// walPath names the log of the database at dbPath.
func walPath(dbPath string) string { return dbPath + ".wal" }

// walFile is the open log file. Only the committer goroutine (or Open,
// before it starts) uses it.
type walFile struct {
	f      *os.File
	off    int64 // end of the last record written
	noSync bool
}

// append writes b (whole records) at the end of the log and syncs it.
func (w *walFile) append(b []byte) error {
	if _, err := w.f.WriteAt(b, w.off); err != nil {
		return err
	}
	w.off += int64(len(b))
	return w.sync()
}

// reset empties the log after its records were applied: the next records
// overwrite them from the start of the file, which keeps the file's size
// and blocks, so an fdatasync writes only the data (on ext4 a third less
// CPU than for an append that grows the file). Replay tells new records
// from the old ones after them by their sequence numbers.
func (w *walFile) reset() error {
	w.off = int64(walHeaderLen)
	return nil
}

// setID writes a new id into the log's header. The log holds no record
// that is not applied when it is called.
func (w *walFile) setID(id []byte) error {
	if _, err := w.f.WriteAt(append([]byte(walMagic), id...), 0); err != nil {
		return err
	}
	return w.sync()
}

func (w *walFile) sync() error {
	if w.noSync {
		return nil
	}
	return fdatasync(w.f)
}

// close closes the file and, after a clean shutdown with everything
// applied, removes it, so that the database file alone is the whole state.
func (w *walFile) close(remove bool) error {
	err := w.f.Close()
	if remove && err == nil {
		err = os.Remove(w.f.Name())
	}
	return err
}

// walState is what Open reads from bbolt about the log.
type walState struct {
	id      []byte
	prevID  []byte // the id before the last backup, if any
	applied uint64
}

// openWAL opens the database's log, returning the records bbolt has not
// applied (in order, as one buffer of whole records) and the sequence of
// the last record found. The file is left open for appending after the
// last valid record.
func openWAL(path string, st walState, noSync bool) (w *walFile, unapplied []byte, lastSeq uint64, err error) {
	lastSeq = st.applied
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, 0, err
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, nil, 0, err
	}
	w = &walFile{f: f, off: int64(walHeaderLen), noSync: noSync}
	hdr := append([]byte(walMagic), st.id...)
	prev := append([]byte(walMagic), st.prevID...)
	switch {
	case len(data) >= walHeaderLen && bytes.Equal(data[:walHeaderLen], hdr):
		var end int
		unapplied, end, lastSeq = scanWAL(data[walHeaderLen:], st.applied)
		w.off += int64(end)
		return w, unapplied, lastSeq, nil
	case len(st.prevID) == 8 && len(data) >= walHeaderLen && bytes.Equal(data[:walHeaderLen], prev):
		// A crash between a backup's id change and the header's rewrite:
		// everything in the log was applied before the change.
		if err := w.setID(st.id); err != nil {
			return nil, nil, 0, err
		}
		return w, nil, lastSeq, nil
	case tornHeader(data, hdr):
	default:
		// Another database's log (or not a log at all): never replay it
		// into this one.
		return nil, nil, 0, fmt.Errorf("storage: %s is not the write-ahead log of this database; move it away if the database file was replaced", path)
	}
	// New, or a header torn by a crash at creation (before any record).
	// The file is filled with zeros first (records then overwrite them
	// in place; see reset), and gets its header once that is on disk.
	if err := f.Truncate(0); err != nil {
		return nil, nil, 0, err
	}
	if !noSync {
		zeros := make([]byte, 64<<10)
		for off := int64(walHeaderLen); off < walPrealloc; off += int64(len(zeros)) {
			if _, err := f.WriteAt(zeros[:min(int64(len(zeros)), walPrealloc-off)], off); err != nil {
				return nil, nil, 0, err
			}
		}
		if err := fdatasync(f); err != nil {
			return nil, nil, 0, err
		}
	}
	if _, err := f.WriteAt(hdr, 0); err != nil {
		return nil, nil, 0, err
	}
	if !noSync {
		if err := fdatasync(f); err != nil {
			return nil, nil, 0, err
		}
		if err := syncDir(filepath.Dir(path)); err != nil {
			return nil, nil, 0, err
		}
	}
	return w, nil, lastSeq, nil
}

// walPrealloc is the size a new log file is filled to (more than maxLog
// plus a full batch, so that records are not appended past its end).
const walPrealloc = 8 << 20

// tornHeader reports whether data is what a crash while creating a log
// with header hdr can leave: a prefix of the header, then only zeros.
func tornHeader(data, hdr []byte) bool {
	h := data[:min(len(data), len(hdr))]
	i := 0
	for i < len(h) && h[i] == hdr[i] {
		i++
	}
	return i < len(hdr) && allZero(h[i:])
}

// scanWAL walks the records in b (the file after its header) and returns
// those after sequence applied, the end offset of the last valid record,
// and the last valid sequence seen.
func scanWAL(b []byte, applied uint64) (unapplied []byte, end int, lastSeq uint64) {
	lastSeq = applied
	first := -1
	next := applied + 1
	for off := 0; ; {
		rec, seq, ok := walRecordAt(b, off)
		if !ok {
			break
		}
		switch {
		case seq <= applied && first < 0:
			// Applied before a truncation that the crash undid.
		case seq == next:
			if first < 0 {
				first = off
			}
			next++
			lastSeq = seq
		default:
			// A gap, or older records after newer ones (the tail of a
			// log whose truncation the crash undid): not this log's
			// continuation.
			if first < 0 {
				return nil, off, lastSeq
			}
			return b[first:off], off, lastSeq
		}
		off += len(rec)
		end = off
	}
	if first < 0 {
		return nil, end, lastSeq
	}
	return b[first:end], end, lastSeq
}

// walRecordAt returns the whole record at off in b and its sequence, if a
// valid one is there.
func walRecordAt(b []byte, off int) (rec []byte, seq uint64, ok bool) {
	if len(b)-off < walRecordHdr+walPayloadHd {
		return nil, 0, false
	}
	n := int(binary.BigEndian.Uint32(b[off:]))
	if n < walPayloadHd || n > len(b)-off-walRecordHdr {
		return nil, 0, false
	}
	payload := b[off+walRecordHdr : off+walRecordHdr+n]
	if crc32.Checksum(payload, walCRC) != binary.BigEndian.Uint32(b[off+4:]) {
		return nil, 0, false
	}
	return b[off : off+walRecordHdr+n], binary.BigEndian.Uint64(payload), true
}

// appendWALRecord appends the record of batch seq holding ops (markers are
// skipped) to b. It reports how many ops it holds; a batch of markers only
// appends nothing.
func appendWALRecord(b []byte, seq uint64, ops []pendingOp) ([]byte, int, error) {
	start := len(b)
	b = append(b, make([]byte, walRecordHdr+walPayloadHd)...)
	var n, settles uint32
	for i := range ops {
		if ops[i].kind == opMarker {
			continue
		}
		var err error
		if b, err = appendWALOp(b, &ops[i]); err != nil {
			return b[:start], 0, err
		}
		n++
		if ops[i].kind == opSettle {
			settles++
		}
	}
	if n == 0 {
		return b[:start], 0, nil
	}
	payload := b[start+walRecordHdr:]
	binary.BigEndian.PutUint64(payload, seq)
	binary.BigEndian.PutUint32(payload[8:], n)
	binary.BigEndian.PutUint32(payload[12:], settles)
	binary.BigEndian.PutUint32(b[start:], uint32(len(payload)))
	binary.BigEndian.PutUint32(b[start+4:], crc32.Checksum(payload, walCRC))
	return b, int(n), nil
}

// walOp is a logged op: everything its commit writes, values encoded as
// they are stored. Byte slices point into the log buffer.
type walOp struct {
	kind     opKind
	userID   int64
	keyID    int64
	balance  int64  // the user's balance after the op (with a ledger entry)
	entryID  uint64 // 0: no ledger entry (a settlement that charged nothing)
	entry    []byte // encoded LedgerEntry
	usage    []byte // encoded UsageRecord (settlements)
	day      time.Time
	tokens   int64
	lastUsed time.Time // the key's last use (settlements)
	idemKey  []byte    // idempotency record (credits with a key)
	idemVal  []byte
	// spend: the settlement charged budget windows (walSettleSpend):
	// charged credits to the user's window and, with keySpend, the key's.
	spend                 bool
	keySpend              bool
	charged               int64
	keyWindow, userWindow int64
}

// walSettleSpend is the kind byte of a settlement logged with its budget
// windows (schema 6). A log written before keeps opSettle records, which
// replay without spend. Since schema 8 the usage record is binary and the
// charge entry is left to the checkpoint; logs of schemas 5 to 7 hold JSON
// ones, which decodeUsage still reads (the entry is rebuilt from the record).
const walSettleSpend = 4

// appendWALOp encodes op's writes: the ledger entry, usage record and
// idempotency record are encoded here, on the committer goroutine.
func appendWALOp(b []byte, op *pendingOp) ([]byte, error) {
	kind := byte(op.kind)
	if op.kind == opSettle {
		kind = walSettleSpend
	}
	b = append(b, kind)
	b = binary.AppendVarint(b, op.userID)
	b = binary.AppendVarint(b, op.keyID)
	b = binary.AppendVarint(b, op.balance)
	var err error
	switch {
	case op.entryKind != "" && op.kind == opSettle:
		// The checkpoint writes the charge entry, from the usage record
		// (its credits) and the op's balance: it may group it with the
		// user's other settlements (see committer.apply).
		b = binary.AppendUvarint(b, op.entryID)
		b = appendBytes(b, nil)
	case op.entryKind != "":
		b = binary.AppendUvarint(b, op.entryID)
		e := LedgerEntry{Kind: op.entryKind, Amount: op.amount, BalanceAfter: op.balance, KeyID: op.keyID,
			IdempotencyKey: op.idem, Note: op.note, Time: op.time}
		b = appendBytes(b, appendLedgerBinary(nil, &e))
	default:
		b = binary.AppendUvarint(b, 0)
	}
	switch op.kind {
	case opSettle:
		if b, err = appendSized(b, func(b []byte) ([]byte, error) { return appendUsageBinary(b, &op.rec, time.Unix(0, 0), nil), nil }); err != nil {
			return b, err
		}
		b = binary.AppendVarint(b, op.day.Unix())
		b = binary.AppendVarint(b, op.rec.TotalTokens)
		b = binary.AppendVarint(b, op.time.UnixNano())
		b = binary.AppendVarint(b, -op.amount)
		b = binary.AppendVarint(b, op.userWindow)
		if op.keySpend {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
		b = binary.AppendVarint(b, op.keyWindow)
	case opCredit:
		if op.idem == "" {
			b = binary.AppendUvarint(b, 0)
			break
		}
		b = binary.AppendUvarint(b, 1)
		rec := idemRecord{UserID: op.userID, Amount: op.amount, Balance: op.balance, EntryID: int64(op.entryID), Time: op.time}
		b = appendBytes(b, idemKey(op.userID, op.idem))
		if b, err = appendSized(b, func(b []byte) ([]byte, error) { return appendJSONValue(b, &rec) }); err != nil {
			return b, err
		}
	default:
		return b, fmt.Errorf("storage: op kind %d cannot be logged", op.kind)
	}
	return b, nil
}

// appendSized appends a 4-byte length, then what enc appends.
func appendSized(b []byte, enc func([]byte) ([]byte, error)) ([]byte, error) {
	at := len(b)
	b = append(b, 0, 0, 0, 0)
	b, err := enc(b)
	if err != nil {
		return b, err
	}
	binary.BigEndian.PutUint32(b[at:], uint32(len(b)-at-4))
	return b, nil
}

func appendBytes(b, v []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
	return append(b, v...)
}

func appendJSONValue(b []byte, v any) ([]byte, error) {
	data, err := json.Marshal(v)
	return append(b, data...), err
}

// walReader decodes the ops of one record's payload.
type walReader struct {
	b   []byte
	err error
}

var errWALCorrupt = errors.New("storage: corrupt write-ahead log record")

func (r *walReader) fail() {
	if r.err == nil {
		r.err = errWALCorrupt
	}
	r.b = nil
}

func (r *walReader) byte() byte {
	if len(r.b) < 1 {
		r.fail()
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

// varint reads what binary.AppendVarint wrote (a zig-zag uvarint).
func (r *walReader) varint() int64 {
	u := r.uvarint()
	v := int64(u >> 1)
	if u&1 != 0 {
		v = ^v
	}
	return v
}

func (r *walReader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *walReader) bytes() []byte {
	if len(r.b) < 4 {
		r.fail()
		return nil
	}
	n := binary.BigEndian.Uint32(r.b)
	if uint64(n) > uint64(len(r.b)-4) {
		r.fail()
		return nil
	}
	v := r.b[4 : 4+n : 4+n]
	r.b = r.b[4+n:]
	return v
}

// op decodes the next op into op.
func (r *walReader) op(op *walOp) error {
	*op = walOp{kind: opKind(r.byte()), userID: r.varint(), keyID: r.varint(), balance: r.varint(), entryID: r.uvarint()}
	if op.entryID != 0 {
		op.entry = r.bytes()
	}
	switch op.kind {
	case opSettle, walSettleSpend:
		op.usage = r.bytes()
		op.day = time.Unix(r.varint(), 0).UTC()
		op.tokens = r.varint()
		op.lastUsed = time.Unix(0, r.varint()).UTC()
		if op.kind == walSettleSpend {
			op.kind, op.spend = opSettle, true
			op.charged, op.userWindow = r.varint(), r.varint()
			op.keySpend = r.byte() == 1
			op.keyWindow = r.varint()
		}
	case opCredit:
		if r.uvarint() == 1 {
			op.idemKey = r.bytes()
			op.idemVal = r.bytes()
		}
	default:
		r.fail()
	}
	return r.err
}

// walRecords iterates over whole records (as scanWAL or appendWALRecord
// produced them), calling fn with each record's op and settlement counts
// and a reader over its ops.
func walRecords(log []byte, fn func(ops, settles int, r *walReader) error) error {
	for len(log) > 0 {
		if len(log) < walRecordHdr+walPayloadHd {
			return errWALCorrupt
		}
		n := int(binary.BigEndian.Uint32(log))
		if n < walPayloadHd || n > len(log)-walRecordHdr {
			return errWALCorrupt
		}
		payload := log[walRecordHdr : walRecordHdr+n]
		r := walReader{b: payload[walPayloadHd:]}
		if err := fn(int(binary.BigEndian.Uint32(payload[8:])), int(binary.BigEndian.Uint32(payload[12:])), &r); err != nil {
			return err
		}
		log = log[walRecordHdr+n:]
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// migrateWAL gives the database the random id its log files carry.
func migrateWAL(tx *bbolt.Tx) error {
	id := make([]byte, 8)
	if _, err := rand.Read(id); err != nil {
		return err
	}
	return tx.Bucket(bMeta).Put(kWALID, id)
}
