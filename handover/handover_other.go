//go:build !linux

package handover

import (
	"context"
	"net"
)

// Handover hands over on Linux only; here New always fails.
type Handover struct{}

// New returns ErrNotSupported.
func New(Options) (*Handover, error) { return nil, ErrNotSupported }

func (*Handover) HasParent() bool { return false }

func (*Handover) Listen(network, addr string, listen func(network, addr string) (net.Listener, error)) (net.Listener, error) {
	return listen(network, addr)
}

func (*Handover) AddConn(string, net.Conn) error              { return ErrNotSupported }
func (*Handover) SetState([]byte)                             {}
func (*Handover) SetEarlyState([]byte) error                  { return ErrNotSupported }
func (*Handover) EarlyState() []byte                          { return nil }
func (*Handover) Conn(string) (net.Conn, error)               { return nil, ErrNotInherited }
func (*Handover) State() ([]byte, error)                      { return nil, nil }
func (*Handover) Ready() error                                { return nil }
func (*Handover) Exit() <-chan struct{}                       { return nil }
func (*Handover) Stop()                                       {}
func (*Handover) Upgrade(context.Context, func() error) error { return ErrNotSupported }
