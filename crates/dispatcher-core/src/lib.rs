//! The Dispatcher domain: what a dispatch is, which state changes are legal, what the messages on the
//! broker and the webhooks on the wire look like, how webhooks are signed and which template formats exist.
//!
//! Nothing in this crate performs I/O, so every rule here is unit-tested without a database or broker.

pub mod aimd;
pub mod circuit;
pub mod email;
pub mod error;
pub mod event;
pub mod health;
pub mod netpolicy;
pub mod ratelimit;
pub mod retry;
pub mod signing;
pub mod status;
pub mod template;

pub use error::{DispatchError, ErrorCode};
pub use event::{
    parse_outcomes, parse_requests, BatchedOutcome, BatchedRequest, DeliveryEventData,
    DeliveryTask, DispatchRequested, EndpointEventData, EventData, EventType, InboundProviderEvent,
    OutcomeBatch, OutcomeEvent, ProviderEventData, ProviderEventMessage, ProviderEventType,
    RequestBatch, WebhookData, WebhookPayload,
};
pub use status::{DispatchStatus, TransitionError};
pub use template::{RenderError, TemplateFormat, TemplateSyntaxError};
