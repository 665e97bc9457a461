package gguf

import (
	"fmt"
	"math"
	"reflect"
)

// KV is one metadata entry.
type KV struct {
	Key   string
	Value Value
}

// Value is a metadata value: a scalar or an array of scalars. The zero
// Value is invalid; make values with the constructors below.
type Value struct {
	typ  ValueType
	elem ValueType // element type of an array
	// v is uint8, int8, uint16, int16, uint32, int32, float32, bool, string,
	// uint64, int64 or float64 for a scalar, or a slice of one of them for an
	// array (never nil for a valid array).
	v any
}

// Scalar is the set of Go types a metadata scalar maps to.
type Scalar interface {
	uint8 | int8 | uint16 | int16 | uint32 | int32 | float32 | bool | string | uint64 | int64 | float64
}

// scalarType returns the value type of a Go scalar.
func scalarType(x any) (ValueType, bool) {
	switch x.(type) {
	case uint8:
		return TypeUint8, true
	case int8:
		return TypeInt8, true
	case uint16:
		return TypeUint16, true
	case int16:
		return TypeInt16, true
	case uint32:
		return TypeUint32, true
	case int32:
		return TypeInt32, true
	case float32:
		return TypeFloat32, true
	case bool:
		return TypeBool, true
	case string:
		return TypeString, true
	case uint64:
		return TypeUint64, true
	case int64:
		return TypeInt64, true
	case float64:
		return TypeFloat64, true
	}
	return 0, false
}

// Of makes a scalar value of x's type.
func Of[T Scalar](x T) Value {
	t, _ := scalarType(x)
	return Value{typ: t, v: x}
}

// Array makes an array value; the slice is kept, not copied. An empty array
// is valid (gguf-py refuses to write one, ggml reads it).
func Array[T Scalar](xs []T) Value {
	var zero T
	t, _ := scalarType(zero)
	if xs == nil {
		xs = []T{}
	}
	return Value{typ: TypeArray, elem: t, v: xs}
}

// Convenience constructors for the types llama.cpp's metadata uses.
func Uint32(x uint32) Value   { return Of(x) }
func Int32(x int32) Value     { return Of(x) }
func Float32(x float32) Value { return Of(x) }
func Bool(x bool) Value       { return Of(x) }
func String(x string) Value   { return Of(x) }
func Uint64(x uint64) Value   { return Of(x) }

// Type is the value's type (TypeArray for arrays).
func (v Value) Type() ValueType { return v.typ }

// ElemType is an array's element type.
func (v Value) ElemType() ValueType { return v.elem }

// Valid reports whether v was made by a constructor (or read from a file).
func (v Value) Valid() bool { return v.v != nil }

// Any returns the Go value: a scalar or a slice (see Scalar).
func (v Value) Any() any { return v.v }

// Len is an array's length (0 for a scalar).
func (v Value) Len() int {
	if v.typ != TypeArray || v.v == nil {
		return 0
	}
	return reflect.ValueOf(v.v).Len()
}

// Uint returns an unsigned or non-negative signed integer scalar as uint64.
func (v Value) Uint() (uint64, bool) {
	switch x := v.v.(type) {
	case uint8:
		return uint64(x), true
	case uint16:
		return uint64(x), true
	case uint32:
		return uint64(x), true
	case uint64:
		return x, true
	case int8, int16, int32, int64:
		i, _ := v.Int()
		return uint64(i), i >= 0
	}
	return 0, false
}

// Int returns an integer scalar as int64 (a uint64 above MaxInt64 fails).
func (v Value) Int() (int64, bool) {
	switch x := v.v.(type) {
	case int8:
		return int64(x), true
	case int16:
		return int64(x), true
	case int32:
		return int64(x), true
	case int64:
		return x, true
	case uint8, uint16, uint32:
		u, _ := v.Uint()
		return int64(u), true
	case uint64:
		return int64(x), x <= math.MaxInt64
	}
	return 0, false
}

// Float returns a float32 or float64 scalar as float64.
func (v Value) Float() (float64, bool) {
	switch x := v.v.(type) {
	case float32:
		return float64(x), true
	case float64:
		return x, true
	}
	return 0, false
}

// Str returns a string scalar.
func (v Value) Str() (string, bool) {
	s, ok := v.v.(string)
	return s, ok
}

// BoolValue returns a bool scalar.
func (v Value) BoolValue() (bool, bool) {
	b, ok := v.v.(bool)
	return b, ok
}

// Strings returns a string array.
func (v Value) Strings() ([]string, bool) {
	s, ok := v.v.([]string)
	return s, ok
}

// Ints returns an integer array as int64s (a new slice).
func (v Value) Ints() ([]int64, bool) {
	if v.typ != TypeArray {
		return nil, false
	}
	rv := reflect.ValueOf(v.v)
	out := make([]int64, rv.Len())
	for i := range out {
		e, ok := Value{typ: v.elem, v: rv.Index(i).Interface()}.Int()
		if !ok {
			return nil, false
		}
		out[i] = e
	}
	return out, true
}

// String formats the value for humans (arrays longer than 8 are elided).
func (v Value) String() string {
	if v.typ != TypeArray {
		return fmt.Sprintf("%v", v.v)
	}
	rv := reflect.ValueOf(v.v)
	n := rv.Len()
	if n <= 8 {
		return fmt.Sprintf("%v", v.v)
	}
	return fmt.Sprintf("%v ... (%d %s)", rv.Slice(0, 8).Interface(), n, v.elem)
}

// Equal reports whether two values have the same type and contents (NaNs
// compare by bits).
func (v Value) Equal(w Value) bool {
	if v.typ != w.typ || v.elem != w.elem {
		return false
	}
	if v.typ != TypeArray {
		return scalarEqual(v.v, w.v)
	}
	a, b := reflect.ValueOf(v.v), reflect.ValueOf(w.v)
	if a.Len() != b.Len() {
		return false
	}
	for i := 0; i < a.Len(); i++ {
		if !scalarEqual(a.Index(i).Interface(), b.Index(i).Interface()) {
			return false
		}
	}
	return true
}

func scalarEqual(a, b any) bool {
	switch x := a.(type) {
	case float32:
		y, ok := b.(float32)
		return ok && math.Float32bits(x) == math.Float32bits(y)
	case float64:
		y, ok := b.(float64)
		return ok && math.Float64bits(x) == math.Float64bits(y)
	}
	return a == b
}
