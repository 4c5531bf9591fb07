package peer

// SetShutdownHook makes s call f once Serve has begun its graceful shutdown
// (after the listener is closed). Call it before Serve.
func SetShutdownHook(s *Server, f func()) { s.onShutdown = f }
