//! `GET /streams/{stream}/presence`: who is online. Membership itself comes from `GET /sse`
//! (`client=`), and live joins and leaves go out on SSE (`presence=1`); see `sse/`.

use warp::reply::{Reply, Response};
use warp::Filter;

use super::api::Api;
use super::auth;
use super::error::respond;
use super::request::{readable_stream, with_api};

pub fn routes(api: Api) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("streams" / String / "presence")
        .and(warp::get())
        .and(auth::reader(api.clone()))
        .and(auth::app_request())
        .and(with_api(api))
        .then(
            |stream: String, grant, ask: auth::AppRequest, api: Api| async move {
                respond(
                    async {
                        let stream = readable_stream(&api, &stream, grant, &ask).await?;
                        let members = api.broker.presence().members(&stream).await?;
                        Ok(
                            warp::reply::json(&super::wire::PresenceJson::from(&members))
                                .into_response(),
                        )
                    }
                    .await,
                )
            },
        )
}
